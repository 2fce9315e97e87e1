"""CAM overlays, stitching along time, and PNG encoding."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from echocam import colormaps


def overlay(
    spectrogram_rgb: torch.Tensor, maps: torch.Tensor, *, lut: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Blend colormapped ``maps`` (b, k, h, w) in [0, 1] over uint8 (b, 3, h, w) → (b, k, 3, h, w).

    ``out = (1 - alpha) * spectrogram + alpha * lut(map)``, as the notebook's imshow at alpha 0.5.
    """
    heat = colormaps.apply(maps, lut).permute(0, 1, 4, 2, 3).float()  # (b, k, 3, h, w)
    base = spectrogram_rgb.unsqueeze(1).float()
    return (base * (1.0 - alpha) + heat * alpha).round_().to(torch.uint8)


def stitch(windows: np.ndarray, start_columns: np.ndarray) -> np.ndarray:
    """Lay windows (w, ..., h, t) along time at ``start_columns`` → (..., h, total).

    Later windows overwrite the columns they share with earlier ones (the end-aligned last
    window, or any hop shorter than the window).
    """
    width = int(start_columns[-1]) + windows.shape[-1]
    out = np.empty(windows.shape[1:-1] + (width,), dtype=windows.dtype)
    for win, start in zip(windows, start_columns, strict=True):
        out[..., start : start + win.shape[-1]] = win
    return out


def encode_png(rgb: np.ndarray, *, compress_level: int) -> bytes:
    """uint8 (3, h, w) or (h, w, 3) → PNG bytes at zlib ``compress_level`` (0 fastest ... 9)."""
    if rgb.shape[0] == 3 and rgb.shape[-1] != 3:
        rgb = np.moveaxis(rgb, 0, -1)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(
        buf, format="PNG", compress_level=compress_level
    )
    return buf.getvalue()
