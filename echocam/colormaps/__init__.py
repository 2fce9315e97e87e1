"""Matplotlib's perceptual colormaps as 256x3 uint8 lookup tables (no matplotlib at run time).

The tables were written by ``matplotlib.colormaps[name](np.arange(256), bytes=True)``; a test
checks them against matplotlib when it is installed.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
import torch


@cache
def lut(name: str) -> np.ndarray:
    """The (256, 3) uint8 table of colormap ``name`` ("magma" or "plasma")."""
    with resources.files(__package__).joinpath(f"{name}.npy").open("rb") as f:
        table = np.load(f)
    table.setflags(write=False)
    return table


def table(name: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """``lut(name)`` as a (256, 3) uint8 tensor on ``device``."""
    return torch.tensor(lut(name), device=device)


def apply(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Map ``values`` in [0, 1], shape (...), through ``table`` (256, 3) to uint8 (..., 3).

    Indexing is matplotlib's: ``floor(v * 256)`` clipped to [0, 255].
    """
    idx = (values * 256).long().clamp_(0, 255)
    return table[idx]
