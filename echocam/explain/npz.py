"""An ``.npz`` written member by member, a large member in parts: never two copies of an array.

What ``np.load`` reads: a zip of ``.npy`` members, stored (not deflated), as ``np.savez`` writes.
``np.savez`` needs every array whole and, into memory, keeps the archive beside them; here a
member's rows can arrive a part at a time (a long recording's dB spectrogram, a block of
windows at a time) and the archive goes to a file.  Members carry a fixed timestamp, so equal
arrays give equal bytes (``np.savez`` stamps the time of writing).
"""

from __future__ import annotations

import zipfile
from typing import BinaryIO

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


class NpzWriter:
    """Writes ``.npy`` members into ``file``; one member open at a time, then :meth:`close`."""

    def __init__(self, file: BinaryIO):
        self.zip = zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._member: BinaryIO | None = None
        self._left = 0  # bytes the open member still expects

    def add(self, name: str, array: np.ndarray) -> None:
        """A whole member ``name`` (no ``.npy``), as ``np.savez`` writes it."""
        with self._open(name) as f:
            np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)

    def begin(self, name: str, *, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Open member ``name`` of ``shape``; its rows (C order) follow through :meth:`write`."""
        self._member = self._open(name)
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": tuple(int(n) for n in shape),
        }
        np.lib.format.write_array_header_1_0(self._member, header)
        self._left = int(np.prod(shape)) * np.dtype(dtype).itemsize

    def write(self, rows: np.ndarray) -> None:
        """The next rows of the open member (any leading count, the member's trailing shape)."""
        data = np.ascontiguousarray(rows)
        if self._member is None or data.nbytes > self._left:
            raise ValueError("more rows than the member's shape holds")
        self._member.write(memoryview(data).cast("B"))
        self._left -= data.nbytes

    def end(self) -> None:
        """Close the open member; its rows must all have been written."""
        if self._member is None or self._left:
            raise ValueError(f"member closed {self._left} bytes short of its shape")
        self._member.close()
        self._member = None

    def close(self) -> None:
        if self._member is not None:
            raise ValueError("a member is still open")
        self.zip.close()

    def _open(self, name: str) -> BinaryIO:
        info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
        info.compress_type = zipfile.ZIP_STORED
        return self.zip.open(info, "w", force_zip64=True)
