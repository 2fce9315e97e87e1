"""Output bytes ÷ input bytes, per output kind and per format choice, on the real recordings.

Every configuration explains the same recordings (the shared ones, else samples/) with the same
model (random weights: the CAM's shape barely moves the sizes) and sums the bytes of each kind
of file it writes: the spectrogram PNG, the overlay, ``cam.npz``, the Raven/Audacity files
(detections), ``embeddings.parquet`` and ``record.json``.  Ratios are to the recordings' own
bytes; KB per 5-s window and the encode stage's CPU milliseconds per window (the record's
``timings_s.encode``, one thread) come with them.  Target: the defaults' outputs take at most
the recordings' own bytes.

    python benchmarks/bench_outputs.py [--recordings N] [--json PATH]
"""

from __future__ import annotations

import argparse
from collections import Counter

import _common as C
import torch

from echocam.bucket import records
from echocam.explain.encoder import read
from echocam.explain.model import load_model
from echocam.explain.pipeline import Explainer, Source
from echocam.settings import Params

#: label → Params fields; the first is the defaults.
CONFIGS: dict[str, dict] = {
    "defaults (overlay JPEG q85)": {},
    "overlay JPEG q75": {"overlay_quality": 75},
    "overlay JPEG q95": {"overlay_quality": 95},
    "overlay WebP q85": {"overlay_format": "webp"},
    "overlay PNG (lossless)": {"overlay_format": "png"},
    "defaults + db (float16 dB)": {
        "outputs": ("spectrogram", "overlay", "cam", "db", "detections", "embeddings")
    },
    "defaults without embeddings": {"outputs": ("spectrogram", "overlay", "cam", "detections")},
    "spectrogram + cam only": {"outputs": ("spectrogram", "cam")},
}
KINDS = ("spectrogram", "overlay", "cam", "detections", "embeddings", "record")


def kind(name: str) -> str:
    if name in ("selections.txt", "labels.txt"):
        return "detections"
    return name.split("/", 1)[0].split(".", 1)[0]  # spectrogram, overlay, cam; tiles: their image


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model = load_model("random")
    paths = C.recordings()[: args.recordings]
    sources = [Source(p.name, p.read_bytes(), p.stat().st_size) for p in paths]
    input_bytes = sum(len(s.data) for s in sources)
    configs: dict[str, dict] = {}
    windows = 0
    for label, fields in CONFIGS.items():
        ex = Explainer(model, Params(**fields), device="cpu", batch_size=32)
        sizes: Counter[str] = Counter()
        encode_s, windows = 0.0, 0
        for source in sources:  # one at a time: the encode timings are then one thread's
            (result,) = ex.explain([source])
            record = result.record
            for key, blob in result.files.items():
                sizes[kind(key.rsplit("/", 1)[-1])] += len(read(blob))
            result.close()
            sizes["record"] += len(records.dumps(record))
            encode_s += record["timings_s"]["encode"]
            windows += record["n_windows"]
        configs[label] = _summary(sizes, input_bytes, windows, encode_s)
    rows = []
    for label, c in configs.items():
        ratios = c["ratio_by_kind"]
        rows.append([label, *(ratios.get(k, 0.0) for k in KINDS), c["ratio"],
                     c["kb_per_window_total"], c["encode_ms_per_window"]])  # fmt: skip
    print(C.machine_line(C.machine()))
    print(f"{len(paths)} recordings, {input_bytes / 1e6:.2f} MB, {windows} windows of 5 s; "
          "bytes ÷ input bytes per kind")  # fmt: skip
    print(C.table(rows, ["configuration", *KINDS, "all", "KB/window", "encode ms/window"]))
    return {
        "machine": C.machine(),
        "recordings": [p.name for p in paths],
        "input_bytes": input_bytes,
        "windows": windows,
        "configs": configs,
        "defaults": next(iter(CONFIGS)),
    }


def _summary(sizes: Counter, input_bytes: int, windows: int, encode_s: float) -> dict:
    total = sum(sizes.values())
    return {
        "bytes_by_kind": dict(sizes),
        "ratio_by_kind": {k: round(v / input_bytes, 4) for k, v in sizes.items()},
        "ratio": round(total / input_bytes, 4),
        "kb_per_window": {k: round(v / windows / 1000, 2) for k, v in sizes.items()},
        "kb_per_window_total": round(total / windows / 1000, 1),
        "encode_ms_per_window": round(1000 * encode_s / windows, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--recordings", type=int, default=None, help="the first N (default: all)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    C.write_json(args.json, run(args))


if __name__ == "__main__":
    main()
