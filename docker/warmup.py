"""Build-time warm-up and smoke test of the worker image (run with no network).

Explains one second of noise at 22 kHz on the CPU with the cached ImageNet weights: this
compiles librosa's numba code into NUMBA_CACHE_DIR (the resample to 22050 Hz goes through
librosa) and fails the build if the image cannot explain a recording offline.
"""

from __future__ import annotations

import io
import os
import sys
import time

import numpy as np
import soundfile as sf

from echocam import explain_bytes
from echocam.explain.model import imagenet_cache_path


def main() -> int:
    weights = imagenet_cache_path()
    if not weights.is_file():
        print(f"warmup: no ImageNet weights at {weights} (TORCH_HOME?)", file=sys.stderr)
        return 1
    noise = np.random.default_rng(0).standard_normal(22000).astype(np.float32) * 0.1
    buf = io.BytesIO()
    sf.write(buf, noise, 22000, format="WAV")
    t0 = time.perf_counter()
    ex = explain_bytes(buf.getvalue(), name="warmup.wav", weights="imagenet", device="cpu")
    cache = os.environ.get("NUMBA_CACHE_DIR", "")
    entries = sum(len(files) for _, _, files in os.walk(cache)) if cache else 0
    print(
        f"warmup: {ex.record['n_windows']} window explained in {time.perf_counter() - t0:.1f} s "
        f"with {weights.name}; {entries} files in NUMBA_CACHE_DIR={cache or '(unset)'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
