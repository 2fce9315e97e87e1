"""Leave-families-out: does a species model trained by the recipe classify and point at calls of
families nobody tuned it on, and does the call box hold the whole call?

Draws one species per family (``devtools.families``) of the chosen set, writes training clips
over some real recordings and held-out clips over others (split by recording), trains with
``echocam train``'s loop (the recipe's defaults, with any ``--set field=value``) or takes
``--checkpoint``,
then reports on the held-out clips, per family:

- F1 of the species' classes (macro over the classes, a Background class included);
- the pointing game: the true class's CAM peak inside the whole call's box ± half a CAM cell;
- call-box IoU with the whole call (``echocam.train.pointing.call_iou``: seconds by mel), and
  the fraction of multi-element calls whose box holds every element.

    python benchmarks/bench_families.py --families tuned           # develop on these
    python benchmarks/bench_families.py --families held-out        # report on these
    python benchmarks/bench_families.py --families held-out --set epochs=20 --set augment.mix_p=0.5
    python benchmarks/bench_families.py --checkpoint m.pt --gaps 0.05,0.1,0.2,0.3,0.5
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np
import torch

from echocam.train.config import TRAIN_INPUT_SIZE


def family_set(name: str) -> tuple[str, ...]:
    from devtools import families as F

    sets = {"tuned": F.TUNED, "held-out": F.HELD_OUT, "all": F.FAMILIES}
    return sets.get(name) or tuple(name.split(","))


def recipe(overrides: list[str]) -> dict:
    """``TrainConfig`` fields from ``name=value`` (``augment.name=value`` for ``Augment``'s);
    values are JSON where they parse, else strings."""
    out: dict = {"augment": {}}
    for item in overrides:
        name, _, text = item.partition("=")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        value = tuple(value) if isinstance(value, list) else value
        if name.startswith("augment."):
            out["augment"][name.removeprefix("augment.")] = value
        else:
            out[name] = value
    return out


def train(root: Path, *, args, overrides: list[str]) -> Path:
    """``echocam train`` in this process, from random weights: the recipe's defaults but for
    ``overrides`` (``field=value``)."""
    from echocam.settings import Params, Settings
    from echocam.train.config import Augment, TrainConfig
    from echocam.train.loop import train as run

    ckpt = root / "model" / "species.pt"
    given = recipe(overrides)
    augment = Augment(**given.pop("augment"))
    if args.box_labels:
        given["labels"] = str(box_labels(root / "train"))
    config = TrainConfig(
        source=str(root / "train"),
        out=str(ckpt),
        background=str(root / "bg"),
        **{"init": "random", "seed": args.seed, **given},
        augment=augment,
    )
    print(f"recipe: {config.to_dict()}", flush=True)
    run(
        config,
        params=Params(input_size=args.input_size, output_stride=args.output_stride),
        settings=Settings(device="cpu", threads=args.threads),
        progress=False,
        log=lambda line: print(line, flush=True),
    )
    return ckpt


def box_labels(train: Path) -> Path:
    """A labels CSV beside ``train`` with every training call's box (its ``calls.csv``, as a
    user's Raven selections would give them), and a class folder without calls (a Background
    folder) as whole recordings."""
    out = train.parent / "labels.csv"
    with (train / "calls.csv").open() as f:
        calls = list(csv.DictReader(f))
    boxed = {c["key"] for c in calls}
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        columns = ["start_s", "end_s", "low_hz", "high_hz"]
        w.writerow(["key", "label", *columns])
        for c in calls:
            w.writerow([c["key"], c["species"], *(c[k] for k in columns)])
        for p in sorted(train.glob("*/*.wav")):
            key = p.relative_to(train).as_posix()
            if key not in boxed:
                w.writerow([key, p.parent.name, "", "", "", ""])
    return out


def figure(model, clips, *, params, path: Path, per_family: int = 2, errors: bool = False) -> None:
    """A sheet of held-out clips, ``per_family`` of each: the true class's CAM over the
    spectrogram, the whole call's box (white), the evidence box (green), the call box (cyan)
    and the CAM's peak (cyan cross).  With ``errors``, every misclassified clip instead, under
    the CAM of the class it was given, labelled with its background recording."""
    from PIL import Image, ImageDraw

    from echocam.explain import render
    from echocam.explain.cam import CellGrid, class_activation_maps, display_maps
    from echocam.explain.localise import Axes, evidence
    from echocam.signal import colormaps
    from echocam.signal.frontend import FrontEnd

    fe = FrontEnd(params)
    blend = colormaps.blend(fe.magma, colormaps.table("plasma", fe.device), alpha=0.5)
    picked, seen = [], {}
    for c in clips:
        if errors:
            picked.append(c)
        elif c.calls and seen.get(c.calls[0].kind, 0) < per_family:
            seen[c.calls[0].kind] = seen.get(c.calls[0].kind, 0) + 1
            picked.append(c)
    fps = params.sample_rate / params.hop_length
    tiles = []
    with torch.inference_mode():
        for clip in picked:
            wave = torch.from_numpy(clip.samples[: params.window_samples])[None]
            db = fe.db(wave)
            levels, _, image = fe.colours(db)
            logits, feats = model.net(fe.model_input(image))
            truth = model.class_names.index(clip.species)
            cid = int(logits.argmax()) if errors else truth  # the class whose CAM is drawn
            if errors and cid == truth:
                continue
            cams = class_activation_maps(feats, model.net.fc_weight, torch.tensor([[cid]]))
            maps = display_maps(cams, size=tuple(db.shape[-2:]), grid=CellGrid.of(params))
            axes = Axes.for_params(params, frames=db.shape[-1])
            ev = evidence(maps[0, 0].numpy(), axes=axes, db=db[0].numpy())
            img = Image.fromarray(render.overlay(levels, maps, table=blend)[0, 0].numpy())
            d = ImageDraw.Draw(img)
            rows = axes.freqs_hz[::-1], np.arange(params.n_mels)[::-1]  # Hz → image row
            boxes = [(c.box, "white", 2) for c in clip.calls] + [
                ((ev.box_begin_s, ev.box_end_s, ev.box_low_hz, ev.box_high_hz), (0, 255, 0), 1),
                ((ev.call_begin_s, ev.call_end_s, ev.call_low_hz, ev.call_high_hz), "cyan", 1),
            ]
            for (t0, t1, lo, hi), colour, width in boxes:
                if not np.isnan(t0):
                    y0, y1 = np.interp([hi, lo], *rows)
                    d.rectangle([t0 * fps, y0, t1 * fps, y1], outline=colour, width=width)
            x, y = ev.peak_time_s * fps, float(np.interp(ev.peak_freq_hz, *rows))
            d.line([x - 8, y, x + 8, y], fill="cyan", width=3)
            d.line([x, y - 8, x, y + 8], fill="cyan", width=3)
            p = float(logits.softmax(-1)[0, cid])
            label = f"{clip.species} p={p:.2f} snr {clip.snr_db:.0f} dB"
            if errors:
                label = f"{clip.species} -> {model.class_names[cid]} p={p:.2f} {clip.background}"
            d.text((4, 2), label, fill="white")
            tiles.append(img)
    if not tiles:
        print(f"{path}: no clips to show")
        return
    w, h = tiles[0].size
    cols = 2 * per_family
    sheet = Image.new("RGB", (cols * w, -(-len(tiles) // cols) * h), "black")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * w, (i // cols) * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=85)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="held-out", help="tuned | held-out | all | a,b,c")
    ap.add_argument("--checkpoint", default=None, help="a trained model (else one is trained)")
    ap.add_argument("--workdir", default=None, help="keep the clips and model here")
    ap.add_argument("--train-per-class", type=int, default=40)
    ap.add_argument("--heldout", type=int, default=15, help="held-out clips per class")
    ap.add_argument("--seed", type=int, default=0, help="species, clips and training")
    ap.add_argument("--overlap-p", type=float, default=0.3, help="calls over other birds")
    ap.add_argument("--no-noise-class", dest="noise_class", action="store_false")
    ap.add_argument("--gaps", default="", help="call-box gaps (s) to compare, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--input-size", type=int, default=TRAIN_INPUT_SIZE, help="Params.input_size (0: native)"
    )
    ap.add_argument("--output-stride", type=int, default=32, help="Params.output_stride: 32 or 16")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a TrainConfig field (augment.FIELD for Augment's), JSON where it parses",
    )
    ap.add_argument(
        "--box-labels",
        action="store_true",
        help="train from a labels CSV of every training call's box (see --set outside_box_loss=W)",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--figure", default=None, help="a JPEG of held-out clips with their boxes")
    ap.add_argument("--errors", default=None, help="a JPEG of the misclassified held-out clips")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from devtools import families, leave_out, synthetic
    from echocam.explain.localise import CALL_GAP_S
    from echocam.explain.model import load_model
    from echocam.settings import Params
    from echocam.train.config import TrainConfig

    m = C.machine(args.threads)
    print(C.machine_line(m), flush=True)
    fams = family_set(args.families)
    species = families.draw_species(fams, rng=np.random.default_rng(args.seed))
    result: dict = {"machine": m, "families": list(fams), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="echocam-bench-families-") as tmp:
        root = Path(args.workdir or tmp)
        train_paths, held_paths = synthetic.split_recordings(C.recordings())
        # the recipe's Background class is made of root/bg's recordings: no Background folder
        built_class = TrainConfig(source="", out="").background_class
        clips = leave_out.write_clips(
            root, species, train_paths, held_paths, per_class=args.train_per_class,
            heldout=args.heldout, seed=args.seed, noise_class=args.noise_class,
            overlap_p=args.overlap_p,
            train_noise_clips=not recipe(args.set).get("background_class", built_class),
        )  # fmt: skip
        ckpt = args.checkpoint
        if ckpt is None:
            t0 = time.perf_counter()
            ckpt = train(root, args=args, overrides=args.set)
            result["train_s"] = time.perf_counter() - t0
            result["train_metrics"] = json.loads((ckpt.parent / "metrics.json").read_text())
        model = load_model(str(ckpt))
        params = Params.from_dict(model.params or {})
        gaps = [float(g) for g in args.gaps.split(",") if g] or [CALL_GAP_S]
        result["by_gap"] = {g: leave_out.score(model, clips, params=params, gap_s=g) for g in gaps}
        if args.figure:
            figure(model, clips, params=params, path=Path(args.figure))
        if args.errors:
            figure(model, clips, params=params, path=Path(args.errors), errors=True)
    for g, r in result["by_gap"].items():
        rows = [
            [k, v["clips"], v["f1"], v["accuracy"], v["pointing"], v["call_iou_median"],
             "" if v["whole_call"] is None else v["whole_call"]]
            for k, v in r["per_family"].items()
        ]  # fmt: skip
        rows.append(
            ["all", "", r["macro_f1"], r["accuracy"], r["pointing"], r["call_iou_median"], ""]
        )
        print(f"\ncall gap {g} s")
        print(C.table(rows, ["family", "clips", "F1", "acc", "pointing", "call IoU", "whole"]))
    by_recording = [[k, v["n"], v["macro_f1"], v["accuracy"]] for k, v in r["by_recording"].items()]
    print("\nby held-out recording (Background clips included)")
    print(C.table(by_recording, ["recording", "clips", "F1", "acc"]))
    if args.json:
        C.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
