"""PNG encoding of real outputs: echocam's writer (Sub filter + ISA-L deflate) against Pillow.

The images are what a run writes: the stitched spectrogram and the overlay of real recordings
(random weights: the CAM's shape does not change the encoder's work much).  Each encoder runs on
the same images, interleaved, in one process; times are per image and ratios are to echocam's
default level.  Pillow here is built with zlib-ng when ``features.check("zlib_ng")`` says so.
Every candidate is decoded back and compared with the source pixels.

    python benchmarks/bench_png.py [--recordings 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import _common as C
import numpy as np
from PIL import Image, features

from echocam.explain import render
from echocam.explain.model import load_model
from echocam.explain.pipeline import Explainer, Source
from echocam.settings import Params


def images(n: int) -> list[np.ndarray]:
    """Spectrogram and overlay images (h, w, 3) uint8 of ``n`` real recordings."""
    ex = Explainer(load_model("random"), Params(), device="cpu", block_batches=1 << 30)
    paths = C.recordings()[:n]
    decoded = ex.decode([Source(p.name, p.read_bytes()) for p in paths])
    (computed,) = ex.compute(decoded)  # one block: every window
    out = []
    for r, part in computed.parts.items():
        cols = np.rint(decoded.recordings[r].windowed.starts / ex.params.hop_length)
        cols = cols.astype(np.int64)
        out.append(render.stitch(part.arrays["spectrogram_rgb"], cols))
        ov = render.stitch(part.arrays["overlay"], cols)
        out.append(ov.reshape(-1, *ov.shape[2:]))
    return out


def pillow(level: int):
    def encode(rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=level)
        return buf.getvalue()

    return encode


def echocam(level: int):
    return lambda rgb: render.encode_png(rgb, compress_level=level)


def run(args: argparse.Namespace) -> dict:
    imgs = images(args.recordings)
    pixels = sum(i.shape[0] * i.shape[1] for i in imgs)
    candidates = {f"echocam L{lv}": echocam(lv) for lv in range(4)}
    candidates |= {f"pillow L{lv}": pillow(lv) for lv in (1, 3, 6)}
    for name, enc in candidates.items():  # lossless, and any PNG reader decodes it
        for img in imgs:
            back = np.asarray(Image.open(io.BytesIO(enc(img))).convert("RGB"))
            if not np.array_equal(back, img):
                raise AssertionError(f"{name} does not round-trip")
    times: dict[str, list[float]] = {name: [] for name in candidates}
    sizes = {name: sum(len(enc(i)) for i in imgs) for name, enc in candidates.items()}
    for _ in range(args.repeats):
        for name, enc in candidates.items():  # interleaved: load drifts hit every candidate
            t0 = time.perf_counter()
            for img in imgs:
                enc(img)
            times[name].append((time.perf_counter() - t0) / len(imgs))
    raw = sum(i.nbytes for i in imgs)
    base = f"echocam L{Params().png_compress_level}"
    rows, result = [], {}
    for name in candidates:
        t = statistics.median(times[name])
        r = {
            "ms_per_image": round(1000 * t, 3),
            "mpixels_per_s": round(pixels / len(imgs) / t / 1e6, 2),
            "bytes_ratio_to_raw": round(sizes[name] / raw, 4),
            "time_ratio_to_default": round(t / statistics.median(times[base]), 3),
            "bytes_ratio_to_default": round(sizes[name] / sizes[base], 3),
        }
        result[name] = r
        rows.append([name, *r.values()])
    print(C.machine_line(C.machine()))
    print(f"{len(imgs)} images, {pixels / 1e6:.1f} Mpixels; Pillow {Image.__version__}, "
          f"zlib-ng: {features.check('zlib_ng')}")  # fmt: skip
    print(C.table(rows, ["encoder", "ms/image", "Mpx/s", "bytes/raw", "time/default",
                         "bytes/default"]))  # fmt: skip
    fastest_pillow = min((n for n in result if n.startswith("pillow")),
                         key=lambda n: result[n]["ms_per_image"])  # fmt: skip
    return {
        "machine": C.machine(),
        "pillow": Image.__version__,
        "pillow_zlib_ng": features.check("zlib_ng"),
        "images": len(imgs),
        "encoders": result,
        "default": base,
        "fastest_pillow": fastest_pillow,
        "pillow_time_ratio": result[fastest_pillow]["time_ratio_to_default"],
        "pillow_bytes_ratio": result[fastest_pillow]["bytes_ratio_to_default"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recordings", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    C.write_json(args.json, run(args))


if __name__ == "__main__":
    main()
