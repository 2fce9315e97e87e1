"""Output bytes ÷ input bytes, per output kind and per format choice, on the real recordings.

Every configuration explains the same recordings (the shared ones, else samples/) with the same
model (random weights: the CAM's shape barely moves the sizes) and sums the bytes of each kind
of file it writes: the spectrogram PNG, the overlay, ``cam.npz``, the Raven/Audacity files
(detections) and ``record.json``.  Ratios are to the recordings' own bytes; KB per 5-s window and
the encode stage's CPU milliseconds per window (the record's ``timings_s.encode``, one thread)
come with them.  The ``issue 13 baseline`` row re-encodes the defaults' arrays the way outputs
were written before (RGB PNGs, float32 dB and the model's 1,000 class names in every NPZ),
and a last table stores the dB spectrogram alone three ways (bytes, CPU, largest error).

    python benchmarks/bench_outputs.py [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import time
import zlib
from collections import Counter, defaultdict

import _common as C
import numpy as np
import torch

from echocam.bucket import records
from echocam.explain import render
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
        "outputs": ("spectrogram", "overlay", "cam", "db", "detections")
    },
    "spectrogram + cam only": {"outputs": ("spectrogram", "cam")},
}
BASELINE = "issue 13 baseline (RGB PNGs, float32 dB, all names)"
KINDS = ("spectrogram", "overlay", "cam", "detections", "record")


def kind(name: str) -> str:
    if name in ("selections.txt", "labels.txt"):
        return "detections"
    return name.split("/", 1)[0].split(".", 1)[0]  # spectrogram, overlay, cam; tiles: their image


def db_encodings(db: np.ndarray) -> dict[str, tuple[int, float, float]]:
    """(bytes, CPU seconds, largest error in dB) of ways to store the dB (w, m, t) float32."""
    f16 = db.astype(np.float16)
    q = np.rint(-db / 0.08).astype(np.uint16)  # 0.08-dB steps: within 0.04 dB
    shuffled = np.frombuffer(q.tobytes(), np.uint8).reshape(-1, 2).T.copy()  # high, low bytes
    out = {}
    for name, make, err in (
        ("float16, np.savez", lambda: _npz(np.savez, f16), f16),
        ("float16, np.savez_compressed", lambda: _npz(np.savez_compressed, f16), f16),
        ("uint16 0.08 dB, byte shuffle, zlib 6", lambda: zlib.compress(shuffled, 6), -0.08 * q),
    ):
        t0 = time.process_time()
        size = len(make())
        out[name] = (size, time.process_time() - t0, float(np.abs(err - db).max()))
    return out


def _npz(save, array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    save(buf, spectrogram_db=array)
    return buf.getvalue()


def baseline_files(ex: Explainer, source: Source) -> dict[str, int]:
    """Bytes per kind of ``source`` encoded as before issue 13, from the same arrays."""
    decoded = ex.decode([source])
    (rec,) = decoded.recordings
    windows: dict[str, list[np.ndarray]] = defaultdict(list)
    for computed in ex.compute(decoded):  # the recording's windows, a block at a time
        for part in computed.parts.values():
            for name, arrays in part.arrays.items():
                windows[name].extend(arrays)
    p = ex.params
    starts = rec.windowed.starts
    cols = np.rint(starts / p.hop_length).astype(np.int64)
    spec = render.stitch(windows["spectrogram_rgb"], cols)
    ov = render.stitch(windows["overlay"], cols)
    ov = ov.reshape(-1, *ov.shape[2:])
    buf = io.BytesIO()
    np.savez(
        buf,
        spectrogram_db=np.stack(windows["spectrogram_db"]),
        cams=np.stack(windows["cams"]),
        class_ids=np.stack(windows["class_ids"]),
        logits=np.stack(windows["logits"]),
        probabilities=np.stack(windows["probabilities"]),
        window_starts_s=starts / p.sample_rate,
        params=np.array(json.dumps(p.to_dict(), sort_keys=True)),
        class_names=np.array(ex.model.class_names),
    )
    stored = db_encodings(np.stack(windows["spectrogram_db"]))
    return {
        **{f"db: {name}": v for name, v in stored.items()},
        "spectrogram": len(render.encode_png(spec, compress_level=p.png_compress_level)),
        "overlay": len(render.encode_png(ov, compress_level=p.png_compress_level)),
        "cam": buf.tell(),
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model = load_model("random")
    paths = C.recordings()
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
    ex = Explainer(model, Params(), device="cpu", batch_size=32)
    base: Counter[str] = Counter()
    db_ways: dict[str, list[float]] = {}
    for source in sources:
        files = baseline_files(ex, source)
        for name in [n for n in files if n.startswith("db: ")]:
            size, seconds, err = files.pop(name)
            way = db_ways.setdefault(name[4:], [0, 0.0, 0.0])
            way[0], way[1], way[2] = way[0] + size, way[1] + seconds, max(way[2], err)
        base.update(files)
    defaults = configs[next(iter(CONFIGS))]["kb_per_window"]
    base.update(  # the record and detections files are those of the defaults
        {k: round(defaults[k] * 1000 * windows) for k in ("detections", "record")}
    )
    configs[BASELINE] = _summary(base, input_bytes, windows, None)

    rows = []
    for label, c in configs.items():
        ratios = c["ratio_by_kind"]
        rows.append([label, *(ratios.get(k, 0.0) for k in KINDS), c["ratio"],
                     c["kb_per_window_total"], c["encode_ms_per_window"]])  # fmt: skip
    print(C.machine_line(C.machine()))
    print(f"{len(paths)} recordings, {input_bytes / 1e6:.2f} MB, {windows} windows of 5 s; "
          "bytes ÷ input bytes per kind")  # fmt: skip
    print(C.table(rows, ["configuration", *KINDS, "all", "KB/window", "encode ms/window"]))
    dbs = {
        name: {
            "kb_per_window": round(size / windows / 1000, 1),
            "ratio": round(size / input_bytes, 3),
            "cpu_ms_per_window": round(1000 * seconds / windows, 2),
            "max_error_db": round(err, 4),
        }
        for name, (size, seconds, err) in db_ways.items()
    }
    print("\nthe dB spectrogram alone, stored three ways:")
    header = ["encoding", "KB/window", "÷ input", "CPU ms/window", "max error dB"]
    print(C.table([[n, *d.values()] for n, d in dbs.items()], header))
    return {
        "machine": C.machine(),
        "recordings": [p.name for p in paths],
        "input_bytes": input_bytes,
        "windows": windows,
        "configs": configs,
        "db_encodings": dbs,
        "defaults": next(iter(CONFIGS)),
        "baseline": BASELINE,
    }


def _summary(sizes: Counter, input_bytes: int, windows: int, encode_s: float | None) -> dict:
    total = sum(sizes.values())
    return {
        "bytes_by_kind": dict(sizes),
        "ratio_by_kind": {k: round(v / input_bytes, 4) for k, v in sizes.items()},
        "ratio": round(total / input_bytes, 4),
        "kb_per_window": {k: round(v / windows / 1000, 2) for k, v in sizes.items()},
        "kb_per_window_total": round(total / windows / 1000, 1),
        "encode_ms_per_window": None if encode_s is None else round(1000 * encode_s / windows, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    C.write_json(args.json, run(args))


if __name__ == "__main__":
    main()
