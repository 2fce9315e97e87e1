"""Where a model runs and on how many threads: the device choice and torch's thread count."""

from __future__ import annotations

import os

import torch


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA where there is one, else the CPU; anything else as torch names it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_threads(threads: int, *, processes: int = 1) -> int:
    """torch intra-op threads: ``threads``, or cores / processes (more than cores oversubscribe)."""
    n = threads or max(1, (os.cpu_count() or 1) // processes)
    torch.set_num_threads(n)
    return n
