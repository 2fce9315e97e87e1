"""The pointing game: does a trained species model's CAM point at the call?

Trains a model from random weights on synthetic species (``devtools.synthetic``: three call
shapes mixed into real recordings) as the tests do (or takes ``--checkpoint``), then on held-out
clips over recordings the training never heard:

- held-out accuracy and macro-F1 (``echocam.train.evaluate``);
- the pointing game (``echocam.train.pointing``): the peak of the true class's CAM, through
  ``echocam.explain.localise``, inside the call's box ± half a CAM cell (target ≥ 80 %), per
  species;
- a figure (``--figure``, default ``results/pointing_game.jpg``): clips with their CAM overlay,
  the call's box (white), the box widened by the tolerance (grey) and the display map's peak
  (cyan cross: what counts).

    python benchmarks/bench_pointing.py                       # trains first (a few minutes)
    python benchmarks/bench_pointing.py --checkpoint species.pt --heldout 20
    python benchmarks/bench_pointing.py --untrained --heldout 1   # checks the script only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np
import torch

# the recipe of tests/trained_species.py
TRAIN_ARGS = ["--init", "random", "--batch-size", "16", "--lr", "1e-3", "--seed", "0"]
TRAIN_ARGS += ["--val-fraction", "0.15", "--target-f1", "1.0", "--target-epochs", "3"]


def recordings() -> tuple[list[Path], list[Path]]:
    from devtools import synthetic

    paths = [p for p in sorted(C.RECORDINGS.glob("*")) if p.suffix in C.AUDIO_SUFFIXES]
    return synthetic.split_recordings(paths)


def figure(model, clips, hits, *, params, path: Path, per_row: int = 3, n: int = 9) -> None:
    """Overlays of the first ``n`` clips with box, tolerance box and CAM peak drawn on."""
    import librosa
    from PIL import Image, ImageDraw

    from echocam.explain import render
    from echocam.explain.cam import class_activation_maps, display_maps
    from echocam.explain.localise import band_centres
    from echocam.signal import colormaps
    from echocam.signal.frontend import FrontEnd
    from echocam.train.dataset import model_inputs
    from echocam.train.pointing import Tolerance

    fe = FrontEnd(params)
    blend = colormaps.blend(fe.magma, colormaps.table("plasma", fe.device), alpha=0.5)
    centres_mel = librosa.hz_to_mel(
        band_centres(n_mels=params.n_mels, fmin=params.fmin, fmax=params.fmax)
    )
    tol = Tolerance.half_cell(params)
    fps = params.sample_rate / params.hop_length

    def row_of_mel(mel: float) -> float:  # image row (0 = highest band) of a mel value
        return params.n_mels - 1 - float(np.interp(mel, centres_mel, np.arange(params.n_mels)))

    tiles = []
    with torch.inference_mode():
        for clip, ok in list(zip(clips, hits, strict=True))[:n]:
            wave = torch.from_numpy(clip.samples[: params.window_samples])[None]
            db = fe.db(wave)
            levels, _, _ = fe.colours(db)
            _, feats = model.net(model_inputs(fe, [wave[0].numpy()]))
            cid = torch.tensor([[model.class_names.index(clip.species)]])
            maps = display_maps(
                class_activation_maps(feats, model.net.fc_weight, cid), size=db.shape[-2:]
            )
            img = Image.fromarray(render.overlay(levels, maps, table=blend)[0, 0].numpy())
            d = ImageDraw.Draw(img)
            m = maps[0, 0].numpy()
            r, c = np.unravel_index(int(m.argmax()), m.shape)
            for call in clip.calls:
                lo, hi = librosa.hz_to_mel(call.low_hz), librosa.hz_to_mel(call.high_hz)
                x0, x1 = call.start_s * fps, call.end_s * fps
                d.rectangle(
                    [
                        x0 - tol.seconds * fps,
                        row_of_mel(hi + tol.mel),
                        x1 + tol.seconds * fps,
                        row_of_mel(lo - tol.mel),
                    ],
                    outline=(160, 160, 160),
                )
                d.rectangle([x0, row_of_mel(hi), x1, row_of_mel(lo)], outline="white", width=2)
            d.line([c - 8, r, c + 8, r], fill="cyan", width=3)
            d.line([c, r - 8, c, r + 8], fill="cyan", width=3)
            d.text(
                (4, 2),
                f"{clip.species} {'hit' if ok else 'MISS'} snr {clip.snr_db:.0f} dB",
                fill="white",
            )
            tiles.append(img)
    w, h = tiles[0].size
    rows = -(-len(tiles) // per_row)
    sheet = Image.new("RGB", (per_row * w, rows * h), "black")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % per_row) * w, (i // per_row) * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a trained model (else one is trained)")
    ap.add_argument(
        "--untrained", action="store_true", help="random weights over the species: no training"
    )
    ap.add_argument("--train-per-class", type=int, default=72)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--epoch-windows", type=int, default=96, help="training windows per epoch")
    ap.add_argument("--heldout", type=int, default=20, help="held-out clips per species")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", default=str(C.RESULTS / "pointing_game.jpg"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from devtools import synthetic
    from echocam.explain.model import load_model
    from echocam.settings import Params, Settings
    from echocam.train.evaluate import evaluate
    from echocam.train.pointing import play

    m = C.machine(args.threads)
    print(C.machine_line(m), flush=True)
    train_paths, held_paths = recordings()
    result: dict = {"machine": m}
    with tempfile.TemporaryDirectory(prefix="echocam-bench-pointing-") as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoint
        if args.untrained:
            from torchvision.models import resnet18

            from echocam.explain.model import save_checkpoint

            names = sorted([*synthetic.SPECIES, synthetic.NOISE_CLASS])
            ckpt = str(tmp / "untrained.pt")
            torch.manual_seed(0)
            save_checkpoint(ckpt, resnet18(num_classes=len(names)).state_dict(), names)
        elif ckpt is None:
            synthetic.write_species(
                tmp / "train",
                per_class=args.train_per_class,
                backgrounds=synthetic.backgrounds(train_paths),
                seed=1,
                duration_s=6.0,
                n_calls=3,
                snr_db=(-6.0, 6.0),
            )
            (tmp / "bg").mkdir()
            for p in train_paths:
                (tmp / "bg" / p.name).write_bytes(p.read_bytes())
            ckpt = str(tmp / "model" / "species.pt")
            t0 = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "echocam_cli",
                    "train",
                    str(tmp / "train"),
                    "--out",
                    ckpt,
                    "--epochs",
                    str(args.epochs),
                    "--patience",
                    str(args.epochs),
                    "--epoch-windows",
                    str(args.epoch_windows),
                    "--threads",
                    str(args.threads),
                    "--background",
                    str(tmp / "bg"),
                    "--quiet",
                    *TRAIN_ARGS,
                ],
                cwd=C.ROOT,
                capture_output=True,
                text=True,
            )
            print(proc.stdout[-2000:], proc.stderr[-2000:], flush=True)
            if proc.returncode != 0:
                return 1
            result["train_s"] = time.perf_counter() - t0
        clips = synthetic.write_species(
            tmp / "heldout",
            per_class=args.heldout,
            backgrounds=synthetic.backgrounds(held_paths),
            seed=2,
            duration_s=5.0,
            n_calls=2,
            snr_db=(-6.0, 6.0),
            prefix="held",
        )
        ev = evaluate(
            str(tmp / "heldout"),
            out=str(tmp / "eval"),
            params=Params(),
            settings=Settings(weights=ckpt, device="cpu", threads=args.threads),
        )
        clips = [c for c in clips if c.calls]  # the species' clips (not the noise class)
        model = load_model(ckpt)
        params = Params.from_dict(model.params or {})
        hits = play(
            model,
            [c.samples for c in clips],
            [[k.box for k in c.calls] for c in clips],
            [model.class_names.index(c.species) for c in clips],
            params=params,
        )
        figure(model, clips, hits, params=params, path=Path(args.figure))
    per_species = {
        s: float(np.mean([h for c, h in zip(clips, hits, strict=True) if c.species == s]))
        for s in synthetic.SPECIES
    }
    result.update(
        heldout_clips=ev["examples"],
        pointing_clips=len(clips),
        heldout_accuracy=ev["accuracy"],
        heldout_macro_f1=ev["macro_f1"],
        pointing_game=float(np.mean(hits)),
        pointing_by_species=per_species,
        figure=args.figure,
    )
    rows = [
        ["held-out macro-F1", f"{ev['macro_f1']:.3f}"],
        ["held-out accuracy", f"{ev['accuracy']:.3f}"],
        ["pointing game (target >= 0.8)", f"{result['pointing_game']:.3f}"],
        *[[f"  {s}", f"{v:.3f}"] for s, v in per_species.items()],
    ]
    print(C.table(rows, ["what", f"{len(clips)} held-out clips"]))
    print(f"figure: {args.figure}")
    if args.json:
        C.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
