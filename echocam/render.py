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


def overlay(levels: torch.Tensor, maps: torch.Tensor, *, table: torch.Tensor) -> torch.Tensor:
    """Colour-mapped ``maps`` (b, k, h, w) in [0, 1] over a spectrogram → uint8 (b, k, h, w, 3).

    ``levels`` (b, h, w) int32 are the spectrogram's colour-map rows
    (:func:`echocam.image.spectrogram_levels`) and ``table`` is :func:`colormaps.blend` of its
    colour map and the maps' at the overlay's alpha: ``(1 - alpha) * spectrogram + alpha *
    lut(map)``, rounded, what ``imshow`` draws at ``alpha``.
    """
    rows = colormaps.levels(maps).add_(levels.unsqueeze(1), alpha=256)
    return colormaps.lookup(rows, table)


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
