"""The C heap of a long-running process: large blocks go back to the system when freed.

glibc serves a block above its mmap threshold with its own mapping, unmapped when freed, and
smaller ones from heaps that rarely shrink.  The threshold adapts: each freed mapped block
raises it to that block's size (up to 32 MiB), so the batch tensors and per-block arrays
that come and go while a long recording is explained (10-20 MB each) soon land in the heaps
and stay there: RSS climbed ~100 MB per block of a 30-minute recording.  A fixed threshold
keeps them mapped (measured: ``benchmarks/bench_long_memory.py``).
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
THRESHOLD = 4 << 20  # bytes: batch tensors and window arrays above, small objects below


def return_large_blocks(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where that is not possible
    (another C library: musl has no ``mallopt``)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
