"""CAM overlays, stitching along time, and PNG encoding."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from isal import isal_zlib

from echocam import colormaps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def overlay(
    spectrogram_rgb: torch.Tensor, maps: torch.Tensor, *, lut: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Blend colormapped ``maps`` (b, k, h, w) in [0, 1] over uint8 (b, h, w, 3) → (b, k, h, w, 3).

    ``out = (1 - alpha) * spectrogram + alpha * lut(map)``, what ``imshow`` draws at ``alpha``.
    """
    heat = colormaps.apply(maps, lut).float()  # (b, k, h, w, 3)
    base = spectrogram_rgb.unsqueeze(1).float()
    return torch.lerp(base, heat, alpha).round_().to(torch.uint8)


def stitch(windows: Sequence[np.ndarray], start_columns: np.ndarray) -> np.ndarray:
    """Lay images (each (..., h, t, 3)) along time at ``start_columns`` → (..., h, total, 3).

    Later windows overwrite the columns they share with earlier ones (the end-aligned last
    window, or any hop shorter than the window).
    """
    width = int(start_columns[-1]) + windows[-1].shape[-2]
    out = np.empty(windows[0].shape[:-2] + (width, windows[0].shape[-1]), dtype=windows[0].dtype)
    for win, start in zip(windows, start_columns, strict=True):
        out[..., start : start + win.shape[-2], :] = win
    return out


class Tiles:
    """Windows laid along time as :func:`stitch` lays them, cut into tiles of ``tile`` columns.

    Windows (each (..., h, t, 3)) are added in time order; a tile is handed back as soon as no
    later window can reach it (one starting at or after its end has arrived), so a long
    recording's image is never held whole: at most the tiles the current window spans.  The
    last tile may be narrower; columns no window covers stay black.
    """

    def __init__(self, *, width: int, tile: int):
        self.width, self.tile = width, tile
        self.open: dict[int, np.ndarray] = {}
        self.done = 0  # tiles handed back
        self.like: np.ndarray | None = None  # a window: the tiles' leading shape and dtype

    def add(self, window: np.ndarray, start: int) -> list[tuple[int, np.ndarray]]:
        """Lay ``window`` at column ``start``; the (index, tile) pairs it completes, in order."""
        self.like = window
        finished = self._until(start)
        end = start + window.shape[-2]
        for t in range(start // self.tile, (end - 1) // self.tile + 1):
            t0 = t * self.tile
            a, b = max(start, t0), min(end, t0 + self.tile)
            self._tile(t)[..., a - t0 : b - t0, :] = window[..., a - start : b - start, :]
        return finished

    def close(self) -> list[tuple[int, np.ndarray]]:
        """The tiles not handed back yet, in order."""
        return self._until(self.width)

    def _until(self, column: int) -> list[tuple[int, np.ndarray]]:
        out = []
        n = -(-self.width // self.tile)
        while self.done < n and min((self.done + 1) * self.tile, self.width) <= column:
            out.append((self.done, self.open.pop(self.done, None)))
            if out[-1][1] is None:  # no window reached it (a hop longer than the window)
                out[-1] = (self.done, self._tile(self.done))
                del self.open[self.done]
            self.done += 1
        return out

    def _tile(self, t: int) -> np.ndarray:
        if t not in self.open:
            cols = min(self.tile, self.width - t * self.tile)
            like = self.like
            self.open[t] = np.zeros(like.shape[:-2] + (cols, like.shape[-1]), like.dtype)
        return self.open[t]


def encode_png(rgb: np.ndarray, *, compress_level: int) -> bytes:
    """uint8 (h, w, 3) → an 8-bit RGB PNG, deflated by ISA-L at ``compress_level``.

    Every row uses PNG's Sub filter (each byte minus the one a pixel to its left: spectrograms
    change slowly along time), then ISA-L deflates the rows (levels 0 fastest ... 3 smallest).
    Written by hand because Pillow and libpng deflate with zlib (or zlib-ng), which is several
    times slower on our images at a similar size (``benchmarks/bench_png.py``), and encoding is
    the largest CPU cost after the forward.  Any PNG reader decodes it.
    """
    h, w, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(h, 3 * w)
    filtered = np.empty((h, 1 + 3 * w), np.uint8)
    filtered[:, 0] = 1  # filter type: Sub
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])  # modulo 256, as PNG wants
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", isal_zlib.compress(filtered, compress_level)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
