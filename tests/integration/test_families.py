"""Right for the right reasons on calls nobody tuned for: the recipe (chosen on
``devtools.families.TUNED``) trains a species model on the families held out of that tuning,
and on held-out clips over recordings the training never heard it classifies, points at the
calls and boxes whole calls.

The recipe and the call box were measured on the tuned families
(``benchmarks/bench_families.py --families tuned``); the held-out families are used only here,
for the figures the training guide reports, and once to choose between two recipes the tuned
families could not separate (the guide says which).  This test trains as the benchmark's short
schedule at 224 (``h1`` in the guide: about 2 minutes here); the recipe's own default, the
unresized input, needs twice the epochs and four times the time for its better figures.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from devtools import families, leave_out, synthetic
from devtools.stack import echocam
from tests.helpers import marks, needs_shared, recordings

pytestmark = [needs_shared]

PER_CLASS, HELDOUT = 40, 15
SCHEDULE = [
    *["--epochs", "10", "--epoch-windows", "96", "--batch-size", "16", "--val-fraction", "0.15"],
    *["--patience", "10", "--target-f1", "1.0", "--target-epochs", "3", "--input-size", "224"],
]
# Measured with this schedule and the recipe's Background class of root/bg's recordings (2
# cores, 2026-12-07), every class's held-out clips over all three held-out recordings: macro-F1
# 0.85, pointing 0.99, call-box median IoU 0.78; note_series' boxes held every note for 67 % of
# calls, chips' for all.  (With a Background folder of the clips' own silence, two frequency
# masks and no hard negatives, the recipe until 2026-12-07: 0.86, 0.95, 0.77.)  The floors
# leave room for another machine's arithmetic: a fresh install of the same versions moved one
# draw of the guide's from pointing 1.00 to 0.84.
F1_FLOOR, POINTING_FLOOR, IOU_FLOOR = 0.75, 0.8, 0.6
# More like this, precision@10 (this test): trained types 0.83 (a detection's box), 0.75 (window),
# 0.86 (true box drawn); unseen types 0.40, 0.39, 0.55 (the recipe until 2026-12-07: 0.88, 0.81,
# 0.87; 0.44, 0.43, 0.53).  A detection's box is its window's call,
# the activity map's evidence box (on the CAM's grid); when it was its class's call box,
# CAM-weighted (until 2026-12-07), it read 0.74 and 0.27: on an unseen call type that class is
# mostly Background, whose CAM is off the call.  This model was not among those the box was
# chosen on.
SEARCH_TRAINED_FLOOR, SEARCH_DRAWN_MARGIN, SEARCH_UNSEEN_BOX_FLOOR = 0.65, 0.05, 0.33


@pytest.fixture(scope="module")
@marks("training", "slow")
def heldout_families(tmp_path_factory) -> dict:
    """A model trained on one species of each held-out family, and held-out clips of them."""
    root = tmp_path_factory.mktemp("families")
    species = families.draw_species(families.HELD_OUT, rng=np.random.default_rng(0))
    train_paths, held_paths = synthetic.split_recordings(recordings())
    clips = leave_out.write_clips(
        root,
        species,
        train_paths,
        held_paths,
        per_class=PER_CLASS,
        heldout=HELDOUT,
        seed=0,
        train_noise_clips=False,  # the recipe makes its Background class of root/bg
    )
    ckpt = root / "model" / "species.pt"
    proc = echocam(
        dict(os.environ), "train", str(root / "train"), "--out", str(ckpt), "--background",
        str(root / "bg"), "--init", "random", "--seed", "0", "--threads", "2", "--quiet",
        *SCHEDULE,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {"ckpt": ckpt, "clips": clips, "stdout": proc.stdout, "stderr": proc.stderr}


def test_heldout_families_classify_point_and_box_whole_calls(heldout_families):
    from echocam.explain.model import load_model
    from echocam.settings import Params

    model = load_model(str(heldout_families["ckpt"]))
    s = leave_out.score(model, heldout_families["clips"], params=Params.from_dict(model.params))
    lines = [
        f"  {kind:12s} F1 {r['f1']:.2f}  pointing {r['pointing']:.2f}  "
        f"call IoU {r['call_iou_median']:.2f}  whole {r['whole_call']}"
        for kind, r in s["per_family"].items()
    ]
    print(
        f"\nheld-out families: macro-F1 {s['macro_f1']:.3f}, pointing {s['pointing']:.3f}, "
        f"call-box median IoU {s['call_iou_median']:.3f}\n" + "\n".join(lines),
        file=sys.stderr,
    )
    assert s["macro_f1"] >= F1_FLOOR
    assert s["pointing"] >= POINTING_FLOOR
    assert s["call_iou_median"] >= IOU_FLOOR
    # multi-element calls: the call box holds every element of most chips' calls, and of some
    # note series (notes up to 1.5 octaves and 0.35 s apart: the call box joins within one
    # octave and 0.3 s)
    assert s["per_family"]["chips"]["whole_call"] >= 0.8
    assert s["per_family"]["note_series"]["whole_call"] >= 0.2


def test_more_like_this_finds_the_same_call_type(heldout_families, tmp_path):
    """Precision@10 of ``echocam search`` from each held-out call, over the held-out clips and
    clips of two call types the model never saw (``benchmarks/bench_search.py --quality``)."""
    import shutil

    from devtools import more_like_this

    src = tmp_path / "clips"
    heldout = heldout_families["ckpt"].parent.parent / "heldout"
    shutil.copytree(heldout, src, ignore=shutil.ignore_patterns("*.csv"))
    _, held_paths = synthetic.split_recordings(recordings())
    unseen = ("upsweep", "pulse_trill")  # tuned families: not among the model's
    more_like_this.write_unseen(src, held_paths, kinds=unseen, per_class=15, seed=0)
    proc = echocam(dict(os.environ), "run", str(src), "--out", str(tmp_path / "run"),
                   "--weights", str(heldout_families["ckpt"]), "--threads", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    boxes = more_like_this.truth_boxes([heldout / "calls.csv", src / "calls.csv"])

    def split(per: dict[str, float]) -> tuple[float, float]:
        trained = [p for s, p in per.items() if s.rsplit("-", 1)[0] not in unseen]
        never = [p for s, p in per.items() if s.rsplit("-", 1)[0] in unseen]
        return float(np.mean(trained)), float(np.mean(never))

    box = split(more_like_this.precision_at_k(tmp_path / "run"))
    window = split(more_like_this.precision_at_k(tmp_path / "run", windows=True))
    drawn = split(more_like_this.precision_drawn(tmp_path / "run", src, boxes))
    print(f"\nprecision@10 trained / unseen: call box {box[0]:.2f} / {box[1]:.2f}, window "
          f"{window[0]:.2f} / {window[1]:.2f}, drawn box {drawn[0]:.2f} / {drawn[1]:.2f}",
          file=sys.stderr)  # fmt: skip
    assert box[0] >= SEARCH_TRAINED_FLOOR and window[0] >= SEARCH_TRAINED_FLOOR
    # the call's embedding beats its window's where the call is short in it (0.1-1.4 s of 5 s)
    assert box[0] >= window[0]
    assert drawn[0] >= SEARCH_TRAINED_FLOOR
    # a call's own box, drawn, finds an unseen call type better than its window does
    assert drawn[1] >= window[1] + SEARCH_DRAWN_MARGIN
    # and a detection's box holds the call, not where its class's CAM points (0.27 when it did)
    assert box[1] >= SEARCH_UNSEEN_BOX_FLOOR
