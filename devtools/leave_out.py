"""Leave-families-out evaluation: clips of drawn species over real recordings split by recording,
and how a trained model classifies, points and boxes on the held-out ones, per family.

Shared by ``benchmarks/bench_families.py`` (which reports) and the tests (which assert floors).

    species = families.draw_species(families.HELD_OUT, rng=np.random.default_rng(0))
    clips = write_clips(root, species, train_paths, held_paths, per_class=40, heldout=15, seed=0)
    # ... echocam train root/train --background root/bg ...
    scores = score(load_model("root/model.pt"), clips, params=Params())
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from devtools import synthetic


def write_clips(
    root: Path,
    species: Sequence,
    train_paths: Sequence[Path],
    held_paths: Sequence[Path],
    *,
    per_class: int,
    heldout: int,
    seed: int,
    noise_class: bool = True,
    overlap_p: float = 0.3,
    train_noise_clips: bool = True,
) -> list[synthetic.Clip]:
    """Training clips under root/train (6 s, two calls, one folder per species and a Background
    folder), the training recordings under root/bg to mix in, and held-out clips (5 s, one call)
    under root/heldout; returns the held-out clips.  SNRs -6 to 6 dB; with chance ``overlap_p``
    a call lies over its background's loudest stretch.  Without ``train_noise_clips`` the
    training has no Background folder (the recipe then makes that class of root/bg's
    recordings: ``--background-class Background``); the held-out clips keep theirs."""
    noise = synthetic.NOISE_CLASS if noise_class else None
    synthetic.write_species(
        root / "train",
        per_class=per_class,
        backgrounds=synthetic.backgrounds(train_paths),
        seed=seed + 1,
        duration_s=6.0,
        n_calls=2,
        snr_db=(-6.0, 6.0),
        species=species,
        noise_class=noise if train_noise_clips else None,
        overlap_p=overlap_p,
    )
    (root / "bg").mkdir(parents=True, exist_ok=True)
    for p in train_paths:
        (root / "bg" / p.name).write_bytes(p.read_bytes())
    return write_heldout(
        root / "heldout", species, held_paths, per_class=heldout, seed=seed + 2,
        noise_class=noise, overlap_p=overlap_p,
    )  # fmt: skip


def write_heldout(
    root: Path,
    species: Sequence,
    held_paths: Sequence[Path],
    *,
    per_class: int,
    seed: int,
    noise_class: str | None,
    overlap_p: float = 0.3,
    prefix: str = "held",
) -> list[synthetic.Clip]:
    """Held-out clips under ``root``: 5 s, one call each, SNRs -6 to 6 dB, over the held-out
    recordings ``held_paths``; with chance ``overlap_p`` over the background's loudest stretch."""
    return synthetic.write_species(
        root,
        per_class=per_class,
        backgrounds=synthetic.backgrounds(held_paths),
        seed=seed,
        duration_s=5.0,
        n_calls=1,
        snr_db=(-6.0, 6.0),
        species=species,
        noise_class=noise_class,
        prefix=prefix,
        overlap_p=overlap_p,
    )


def score(model, clips: Sequence[synthetic.Clip], *, params, gap_s: float | None = None) -> dict:
    """Held-out figures, overall and per family: macro-F1 (Background included), accuracy, the
    pointing game (the true class's CAM peak in the whole call's box ± half a cell), call-box
    median IoU with the whole call (seconds by mel, ``pointing.call_iou``) and, for calls of
    several elements, the fraction whose call box holds every element's middle.  Also accuracy
    and macro-F1 by background recording, and the confusion matrix (rows true, columns
    predicted, in ``class_names``' order)."""
    from echocam.explain.localise import CALL_GAP_S
    from echocam.train import scores
    from echocam.train.pointing import Tolerance, call_iou, hit, localise

    names = model.class_names
    truth = np.array([names.index(c.species) for c in clips])
    found = localise(
        model,
        [c.samples[: params.window_samples] for c in clips],
        truth,
        params=params,
        gap_s=CALL_GAP_S if gap_s is None else gap_s,
    )
    pred = found.probs.argmax(1)
    matrix = scores.confusion(truth, pred, n_classes=len(names))
    by_recording = {}  # one held-out recording with a loud bird can hold most errors: say which
    for recording in sorted({c.background for c in clips}):
        i = np.array([c.background == recording for c in clips])
        s = scores.summarise(scores.confusion(truth[i], pred[i], n_classes=len(names)), names)
        by_recording[recording] = {k: s[k] for k in ("n", "accuracy", "macro_f1")}
    summary = scores.summarise(matrix, names)
    tol = Tolerance.half_cell(params)
    rows: dict[str, dict] = {}
    for clip, ev, p in zip(clips, found.evidence, pred, strict=True):
        if not clip.calls:
            continue
        call = clip.calls[0]
        r = rows.setdefault(
            call.kind, {"species": clip.species, "pointed": [], "iou": [], "whole": [], "right": []}
        )
        r["right"].append(names[p] == clip.species)
        r["pointed"].append(hit(ev, call.box, tolerance=tol))
        r["iou"].append(call_iou(ev, call.box, params=params))
        if len(call.elements) > 1:
            middles = [(a + b) / 2 for a, b, *_ in call.elements]
            r["whole"].append(all(ev.call_begin_s <= m <= ev.call_end_s for m in middles))
    per_family = {
        kind: {
            "clips": len(r["iou"]),
            "accuracy": float(np.mean(r["right"])),
            "f1": summary["per_class"][r["species"]]["f1"],
            "pointing": float(np.mean(r["pointed"])),
            "call_iou_median": float(np.median(r["iou"])),
            "whole_call": float(np.mean(r["whole"])) if r["whole"] else None,
        }
        for kind, r in rows.items()
    }
    every = {k: sum((r[k] for r in rows.values()), []) for k in ("pointed", "iou")}
    return {
        "macro_f1": summary["macro_f1"],
        "accuracy": summary["accuracy"],
        "pointing": float(np.mean(every["pointed"])),
        "call_iou_median": float(np.median(every["iou"])),
        "per_family": per_family,
        "by_recording": by_recording,
        "class_names": list(names),
        "confusion": matrix.tolist(),
    }
