"""Build-time smoke test of the worker image (run with no network).

Explains one second of noise at 22 kHz on the CPU with the cached ImageNet weights, so the build
fails if the image cannot explain a recording offline.
"""

from __future__ import annotations

import io
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
    print(
        f"warmup: {ex.record['n_windows']} window explained in {time.perf_counter() - t0:.1f} s "
        f"with {weights.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
