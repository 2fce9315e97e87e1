"""Tiles, thumbnails and crops of a run's images (PNG, JPEG, WebP) and colour bars, on the server.

A 30-minute recording's images are ~198,000 pixels wide: the browser gets tiles of
:data:`TILE` pixels at zoom levels that halve the resolution each step (level z shows
``TILE * 2**z`` image columns per tile), never the whole image.  An image is one PNG, or (a
recording wider than ``echocam.explain.encoder.TILE_COLUMNS``) the PNG tiles the run wrote side by
side (:class:`Tiled`, from :func:`image_ref`): only the tiles a view spans are decoded.  Decoded
PNGs are kept for the views that follow (an LRU bounded in pixels), and encoded tiles in a
byte-bounded LRU.
"""

from __future__ import annotations

import io
import math
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources

TILE = 1024  # tile width in output pixels
THUMB = (320, 160)
MAX_PIXELS = 400_000_000  # decoded RGB stays under 1.2 GB; echocam's largest is ~130 M
FORMATS = ("PNG", "JPEG", "WEBP")  # what Pillow calls the formats echocam writes
DECODED_PIXELS = 64_000_000  # decoded PNGs kept (192 MB of RGB): a 30-minute overlay's tiles


@dataclass(frozen=True)
class Tiled:
    """An image stored as PNG tiles side by side: ``keys`` in order, each ``columns`` wide (the
    last narrower), ``width`` x ``height`` in all."""

    keys: tuple[str, ...]
    columns: int
    width: int
    height: int


def image_ref(record: dict, name: str) -> str | Tiled | None:
    """Image ``name`` ("spectrogram" or "overlay") of an ok ``record``: its PNG's key, or its
    tiles; None when the record has none."""
    outputs = record.get("outputs") or {}
    tiles = outputs.get(f"{name}_tiles")
    if tiles:
        height, width = record["image_sizes"][name]
        return Tiled(tuple(tiles), int(record["tile_columns"]), int(width), int(height))
    return outputs.get(name) or None


class LRU:
    """A thread-safe mapping that forgets the least recently used beyond ``budget`` (sized)."""

    def __init__(self, budget: int, size=len):
        self.budget, self.size = budget, size
        self.items: OrderedDict = OrderedDict()
        self.used = 0
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value) -> None:
        with self.lock:
            if key in self.items:
                self.used -= self.size(self.items.pop(key))
            self.items[key] = value
            self.used += self.size(value)
            while self.used > self.budget and len(self.items) > 1:
                _, old = self.items.popitem(last=False)
                self.used -= self.size(old)


def zoom_levels(width: int) -> int:
    """The coarsest zoom level: the one whose single tile spans the whole ``width``."""
    return max(0, math.ceil(math.log2(max(width, 1) / TILE)))


class Images:
    """Cuts the images that ``read(key) -> bytes`` returns (tiles, thumbnails, crops: PNG)."""

    def __init__(self, read, *, decoded_pixels: int = DECODED_PIXELS, cache_bytes: int = 128 << 20):
        self.read = read
        self.decoded = LRU(decoded_pixels, size=lambda im: im.size[0] * im.size[1])
        self.encoded = LRU(cache_bytes)
        self._decode_lock = threading.Lock()

    def image(self, key: str):
        """The decoded RGB image at ``key`` (PIL), from the LRU when it is there."""
        from PIL import Image

        im = self.decoded.get(key)
        if im is not None:
            return im
        with self._decode_lock:  # tiles of one image arrive together: decode it once
            im = self.decoded.get(key)
            if im is None:
                Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_PIXELS)
                im = Image.open(io.BytesIO(self.read(key)))  # reads the header only
                if im.format not in FORMATS:
                    raise ValueError(f"{key}: {im.format} is not an image echocam writes")
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ValueError(f"{key}: {w}x{h} is above {MAX_PIXELS} pixels")
                im = im.convert("RGB")
                self.decoded.put(key, im)
        return im

    def size(self, ref: str | Tiled) -> tuple[int, int]:
        """(width, height) of the image ``ref``."""
        if isinstance(ref, Tiled):
            return ref.width, ref.height
        return self.image(ref).size

    def region(self, ref: str | Tiled, x0: int, x1: int):
        """Columns ``x0`` to ``x1`` of the image ``ref``, every row (PIL); a tiled image
        decodes only the tiles the columns span."""
        from PIL import Image

        if not isinstance(ref, Tiled):
            im = self.image(ref)
            return im.crop((x0, 0, x1, im.size[1]))
        out = Image.new("RGB", (x1 - x0, ref.height))
        for t in range(x0 // ref.columns, min(len(ref.keys), -(-x1 // ref.columns))):
            left = t * ref.columns
            tile = self.image(ref.keys[t])
            a, b = max(x0, left), min(x1, left + tile.size[0])
            if a < b:
                out.paste(tile.crop((a - left, 0, b - left, tile.size[1])), (a - x0, 0))
        return out

    def _cached(self, cache_key, make) -> bytes:
        data = self.encoded.get(cache_key)
        if data is None:
            data = make()
            self.encoded.put(cache_key, data)
        return data

    def tile(self, ref: str | Tiled, z: int, i: int) -> bytes:
        """Tile ``i`` of zoom level ``z``: columns ``[i, i + 1) * TILE * 2**z``, 1/2**z wide."""

        def make() -> bytes:
            from PIL import Image

            w, h = self.size(ref)
            span = TILE << z
            x0 = i * span
            if z < 0 or z > zoom_levels(w) or i < 0 or x0 >= w:
                raise IndexError(f"no tile {z}/{i} in an image {w} wide")
            x1 = min(w, x0 + span)
            out = self.region(ref, x0, x1)
            if z:
                out = out.resize((max(1, math.ceil((x1 - x0) / (1 << z))), h), Image.BOX)
            return _png(out)

        return self._cached(("tile", ref, z, i), make)

    def thumbnail(self, ref: str | Tiled, *, columns: int) -> bytes:
        """The first ``columns`` of the image, squeezed into :data:`THUMB`."""

        def make() -> bytes:
            from PIL import Image

            w, _ = self.size(ref)
            out = self.region(ref, 0, min(w, max(1, columns))).resize(THUMB, Image.BOX)
            return _png(out)

        return self._cached(("thumb", ref, columns), make)

    def crop(
        self,
        ref: str | Tiled,
        *,
        x0: int,
        x1: int,
        y0: int,
        y1: int,
        box: tuple[float, float, float, float] | None = None,
        width: int = 240,
        marks: tuple[tuple[tuple[float, float, float, float], tuple[int, int, int], int], ...] = (),
    ) -> bytes:
        """Columns x0..x1 and rows y0..y1, ``width`` wide, with ``box`` (x0, y0, x1, y1) drawn
        in cyan, and each of ``marks`` ((x0, y0, x1, y1), RGB, line width) in its colour."""

        def make() -> bytes:
            from PIL import Image, ImageDraw

            w, h = self.size(ref)
            c = self.region(ref, max(0, x0), min(w, x1))
            c = c.crop((0, max(0, y0), c.size[0], min(h, y1)))
            scale = width / max(1, c.size[0])
            out = c.resize((width, max(1, round(c.size[1] * scale))), Image.BOX)
            drawn = ((box, (0, 255, 255), 2),) if box is not None else ()
            origin = (x0, y0, x0, y0)
            for rect, colour, line in (*drawn, *marks):
                r = [(v - o) * scale for v, o in zip(rect, origin, strict=True)]
                ImageDraw.Draw(out).rectangle(r, outline=colour, width=line)
            return _png(out)

        return self._cached(("crop", ref, x0, x1, y0, y1, box, width, marks), make)


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def lut(name: str) -> list[tuple[int, int, int]]:
    """Colormap ``name``'s 256 RGB entries from echocam's table (.npy, read without numpy)."""
    # through echocam.signal (a bare package): echocam.signal.colormaps itself imports torch
    data = resources.files("echocam.signal").joinpath(f"colormaps/{name}.npy").read_bytes()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{name}.npy is not an .npy file")
    header_len = struct.unpack("<H", data[8:10])[0]
    header = data[10 : 10 + header_len].decode("latin1")
    if "'|u1'" not in header or "(256, 3)" not in header or "'fortran_order': False" not in header:
        raise ValueError(f"{name}.npy: unexpected layout {header!r}")
    raw = data[10 + header_len : 10 + header_len + 768]
    return [tuple(raw[3 * i : 3 * i + 3]) for i in range(256)]


def colour_bar(name: str, *, width: int = 256, height: int = 12) -> bytes:
    """A horizontal colour bar PNG of colormap ``name`` (low values left)."""
    table = lut(name)
    row = b"".join(bytes(table[min(255, x * 256 // width)]) for x in range(width))
    raw = b"".join(b"\x00" + row for _ in range(height))
    return png_rgb(width, height, raw)


def png_rgb(width: int, height: int, filtered_rows: bytes) -> bytes:
    """An 8-bit RGB PNG from rows that each start with their filter byte."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(filtered_rows, 6)),
            chunk(b"IEND", b""),
        )
    )
