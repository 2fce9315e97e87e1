"""Tiles, thumbnails and crops of a run's images (PNG, JPEG, WebP) and colour bars, on the server.

A 30-minute recording's overlay is ~99,000 pixels wide: the browser gets tiles of
:data:`TILE` pixels at zoom levels that halve the resolution each step (level z shows
``TILE * 2**z`` image columns per tile), never the whole image.  A decoded image is kept
for the tiles that follow (a small LRU), and encoded tiles in a byte-bounded LRU.
"""

from __future__ import annotations

import io
import math
import struct
import threading
import zlib
from collections import OrderedDict
from importlib import resources

TILE = 1024  # tile width in output pixels
THUMB = (320, 160)
MAX_PIXELS = 400_000_000  # decoded RGB stays under 1.2 GB; echocam's largest is ~130 M
FORMATS = ("PNG", "JPEG", "WEBP")  # what Pillow calls the formats echocam writes


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

    def __init__(self, read, *, decoded: int = 2, cache_bytes: int = 128 << 20):
        self.read = read
        self.decoded = LRU(decoded, size=lambda _: 1)
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

    def _cached(self, cache_key, make) -> bytes:
        data = self.encoded.get(cache_key)
        if data is None:
            data = make()
            self.encoded.put(cache_key, data)
        return data

    def tile(self, key: str, z: int, i: int) -> bytes:
        """Tile ``i`` of zoom level ``z``: columns ``[i, i + 1) * TILE * 2**z``, 1/2**z wide."""

        def make() -> bytes:
            from PIL import Image

            im = self.image(key)
            w, h = im.size
            span = TILE << z
            x0 = i * span
            if z < 0 or z > zoom_levels(w) or i < 0 or x0 >= w:
                raise IndexError(f"no tile {z}/{i} in an image {w} wide")
            x1 = min(w, x0 + span)
            out = im.crop((x0, 0, x1, h))
            if z:
                out = out.resize((max(1, math.ceil((x1 - x0) / (1 << z))), h), Image.BOX)
            return _png(out)

        return self._cached(("tile", key, z, i), make)

    def thumbnail(self, key: str, *, columns: int) -> bytes:
        """The first ``columns`` of the image, squeezed into :data:`THUMB`."""

        def make() -> bytes:
            from PIL import Image

            im = self.image(key)
            w, h = im.size
            out = im.crop((0, 0, min(w, max(1, columns)), h)).resize(THUMB, Image.BOX)
            return _png(out)

        return self._cached(("thumb", key, columns), make)

    def crop(
        self,
        key: str,
        *,
        x0: int,
        x1: int,
        y0: int,
        y1: int,
        box: tuple[float, float, float, float] | None = None,
        width: int = 240,
    ) -> bytes:
        """Columns x0..x1 and rows y0..y1, ``width`` wide, with ``box`` (x0, y0, x1, y1) drawn."""

        def make() -> bytes:
            from PIL import Image, ImageDraw

            im = self.image(key)
            w, h = im.size
            c = im.crop((max(0, x0), max(0, y0), min(w, x1), min(h, y1)))
            scale = width / max(1, c.size[0])
            out = c.resize((width, max(1, round(c.size[1] * scale))), Image.BOX)
            if box is not None:
                origin = (x0, y0, x0, y0)
                bx0, by0, bx1, by1 = ((v - o) * scale for v, o in zip(box, origin, strict=True))
                ImageDraw.Draw(out).rectangle((bx0, by0, bx1, by1), outline=(0, 255, 255), width=2)
            return _png(out)

        return self._cached(("crop", key, x0, x1, y0, y1, box, width), make)


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def lut(name: str) -> list[tuple[int, int, int]]:
    """Colormap ``name``'s 256 RGB entries from echocam's table (.npy, read without numpy)."""
    data = resources.files("echocam").joinpath(f"colormaps/{name}.npy").read_bytes()
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
