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


def levels(values: torch.Tensor) -> torch.Tensor:
    """The table rows of ``values`` in [0, 1]: int32, matplotlib's ``floor(v * 256)`` clipped to
    [0, 255]."""
    return (values * 256).to(torch.int32).clamp_(0, 255)  # values >= 0: truncation is floor


def lookup(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rows (...) int32 of ``table`` (n, c) → (..., c); one gather (``index_select``: several
    times faster than advanced indexing on the CPU)."""
    return table.index_select(0, rows.reshape(-1)).view(*rows.shape, table.shape[-1])


def apply(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Map ``values`` in [0, 1], shape (...), through ``table`` (256, 3) to uint8 (..., 3)."""
    return lookup(levels(values), table)


def blend(under: torch.Tensor, over: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """Every colour of ``over`` (256, 3) at opacity ``alpha`` on every colour of ``under``:
    (256 * 256, 3) uint8, row ``256 * i + j`` = ``round((1 - alpha) * under[i] + alpha * over[j])``.

    Two 8-bit colour maps blended at a fixed alpha take only 65,536 values: an overlay is one
    lookup in this table (196 KB, cache-resident) instead of a blend per pixel.
    """
    mixed = torch.lerp(under.float()[:, None], over.float()[None, :], alpha)
    return mixed.round_().to(torch.uint8).reshape(-1, under.shape[-1])
