"""CAM overlays, stitching along time, and image encoding (PNG by hand, JPEG/WebP by Pillow)."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
import torch
from isal import isal_zlib

from echocam.signal import colormaps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def overlay(levels: torch.Tensor, maps: torch.Tensor, *, table: torch.Tensor) -> torch.Tensor:
    """Colour-mapped ``maps`` (b, k, h, w) in [0, 1] over a spectrogram → uint8 (b, k, h, w, 3).

    ``levels`` (b, h, w) int32 are the spectrogram's colour-map rows
    (:func:`echocam.signal.image.spectrogram_levels`) and ``table`` is :func:`colormaps.blend` of
    its colour map and the maps' at the overlay's alpha: ``(1 - alpha) * spectrogram + alpha *
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
    times slower on our images at a similar size (``benchmarks/notes/png-writer.md``), and encoding
    is the largest CPU cost after the forward.  Any PNG reader decodes it.
    """
    h, w, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(h, 3 * w)
    return _png(w, h, colour_type=2, rows=rows, bpp=3, compress_level=compress_level)


def encode_palette_png(index: np.ndarray, *, palette: np.ndarray, compress_level: int) -> bytes:
    """uint8 (h, w) indices into ``palette`` (256, 3) → an 8-bit indexed-colour PNG.

    Decodes to ``palette[index]``, the same RGB pixels as :func:`encode_png` of that image, in a
    third of the raw bytes (the spectrogram: about 0.4 of the RGB PNG's size).
    """
    h, w = index.shape
    plte = _png_chunk(b"PLTE", np.ascontiguousarray(palette, dtype=np.uint8).tobytes())
    rows = np.ascontiguousarray(index, dtype=np.uint8)
    return _png(w, h, colour_type=3, rows=rows, bpp=1, compress_level=compress_level, extra=plte)


#: The largest width or height each lossy format can hold (JPEG: 16-bit sizes; WebP: 14-bit).
LOSSY_LIMITS = {"jpeg": 65_535, "webp": 16_383}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def encode_image(
    rgb: np.ndarray, *, fmt: str, quality: int, compress_level: int
) -> tuple[str, bytes]:
    """uint8 (h, w, 3) → (file extension, bytes) in ``fmt`` (png, jpeg or webp).

    JPEG (libjpeg-turbo, 4:2:0) and WebP (method 0, the fastest) are lossy at ``quality``
    (1-100); PNG is :func:`encode_png` at ``compress_level``.  An image larger than the lossy
    format can hold (:data:`LOSSY_LIMITS`) is written as PNG: the extension says which.
    """
    h, w, _ = rgb.shape
    if fmt == "png" or max(h, w) > LOSSY_LIMITS[fmt]:
        return "png", encode_png(rgb, compress_level=compress_level)
    from PIL import Image

    options = {"quality": quality, "method": 0} if fmt == "webp" else {"quality": quality}
    with _anonymous_file() as f:
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(f, fmt.upper(), **options)
        f.seek(0)
        return EXTENSIONS[fmt], f.read()


def _anonymous_file() -> BinaryIO:
    """A new file in memory (``memfd_create``; elsewhere a temporary file), opened w+b.

    Pillow encodes into a file with a descriptor with the GIL released, but into a BytesIO a
    block at a time with it held, which serialises the encoding pool's threads.  The bytes are
    the same.
    """
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("echocam-image"), "w+b")  # noqa: SIM115 (caller closes)
    return tempfile.TemporaryFile()  # noqa: SIM115


def _png(
    w: int,
    h: int,
    *,
    colour_type: int,
    rows: np.ndarray,
    bpp: int,
    compress_level: int,
    extra: bytes = b"",
) -> bytes:
    """An 8-bit PNG of ``rows`` (h, w * bpp) uint8, Sub-filtered, deflated by ISA-L."""
    filtered = np.empty((h, 1 + rows.shape[1]), np.uint8)
    filtered[:, 0] = 1  # filter type: Sub
    filtered[:, 1 : 1 + bpp] = rows[:, :bpp]
    np.subtract(rows[:, bpp:], rows[:, :-bpp], out=filtered[:, 1 + bpp :])  # modulo 256
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)  # no interlace
    idat = isal_zlib.compress(filtered, compress_level)
    # one copy of the deflated rows, into the file (each is made with the GIL held)
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            extra,
            *_chunk_parts(b"IDAT", idat),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join(_chunk_parts(kind, data))


def _chunk_parts(kind: bytes, data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """A PNG chunk's length, type, data and CRC (of type and data, not concatenated)."""
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)
