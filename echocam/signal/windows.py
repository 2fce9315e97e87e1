"""Cut a recording into fixed-length analysis windows."""

from __future__ import annotations

import numpy as np


def window_starts(n_samples: int, *, window: int, hop: int) -> np.ndarray:
    """Start sample of each window, shape (w,), for windows of ``window`` samples every ``hop``.

    A recording shorter than one window is a single window of its own length (the caller uses
    ``min(window, n_samples)`` as the length).  A trailing remainder shorter than a window is
    covered by one last full window aligned to the recording's end, overlapping its predecessor:
    every sample is analysed and all windows of a recording have the same length.
    """
    if n_samples <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_samples - window + 1, hop, dtype=np.int64)
    if starts[-1] + window < n_samples:
        starts = np.append(starts, n_samples - window)
    return starts


def frame(samples: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Stack windows of ``length`` samples from ``samples`` (n,) into an array (w, length)."""
    view = np.lib.stride_tricks.sliding_window_view(samples, length)
    return view[starts]
