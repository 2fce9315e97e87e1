""" "More like this": exact cosine-similarity search over runs' embeddings.parquet.

A query is a vector: a detection's (``--like-detection``), or a box's in a recording or a clip's
(``--like``, ``--like-audio``; ``echocam.explain.query`` embeds them with the run's model).
:func:`scan` reads the run's table a row group at a time and keeps the best ``top`` rows, so
memory stays that of one row group whatever the run's size.  Boxes are compared with boxes,
windows with windows.  The stored vectors are unit length, so a similarity is one float16
matrix-vector product (torch's, accumulating in float32: numpy has no fast float16 product),
refined in float32 near the top, on the device where there is one; figures in
``benchmarks/results/search.json``.
"""

from __future__ import annotations

import io
import json
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from echocam.bucket import embeddings
from echocam.bucket.detections import detection_id
from echocam.bucket.embeddings import vectors
from echocam.bucket.storage import Store
from echocam.errors import InvalidParams

#: A row group's rows at a time: 16 MiB of float16 vectors at 512 values.
BATCH_ROWS = 16384
_SECONDS = r"(\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"{_SECONDS}-{_SECONDS}")


@dataclass(frozen=True)
class Box:
    """A box in a recording: seconds from its start, and optionally Hz."""

    source_key: str
    begin_s: float
    end_s: float
    low_hz: float | None = None
    high_hz: float | None = None

    @classmethod
    def parse(cls, text: str) -> Box:
        """``KEY@T0-T1`` or ``KEY@T0-T1@F0-F1`` (s, Hz); the key may itself hold ``@``."""
        parts = text.split("@")
        ranges = []
        while len(parts) > 1 and len(ranges) < 2 and _RANGE.fullmatch(parts[-1]):
            ranges.insert(0, tuple(float(x) for x in _RANGE.fullmatch(parts.pop()).groups()))
        key = "@".join(parts)
        if not ranges or not key:
            raise InvalidParams(f"--like {text!r}: expected KEY@T0-T1 or KEY@T0-T1@F0-F1")
        (t0, t1), (f0, f1) = ranges[0], ranges[1] if len(ranges) == 2 else (None, None)
        if t1 <= t0 or (f0 is not None and f1 <= f0):
            raise InvalidParams(f"--like {text!r}: each range must end after it begins")
        return cls(key, t0, t1, f0, f1)


def parse_detection_id(text: str) -> tuple[str, float, str]:
    """(source key, window start s, class name) of :func:`detection_id`'s text."""
    head, sep, class_name = text.rpartition("#")
    key, at, start = head.rpartition("@")
    try:
        begin = float(start)
    except ValueError:
        begin = None
    if not (sep and at and key and class_name) or begin is None:
        raise InvalidParams(f"detection id {text!r}: expected KEY@WINDOW_START#CLASS")
    return key, begin, class_name


def run_batches(
    store: Store, *, row_groups: Sequence[int] | None = None, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """The run's embeddings.parquet (or those of its ``row_groups``) a row group at a time; none
    when the run has no embeddings.  An object store's table is read by ranges, never whole."""
    try:
        f = _open(store)
    except FileNotFoundError:
        return
    with f:
        # pre_buffer off: on, pyarrow held every row group read until the file was closed
        table = pq.ParquetFile(f, pre_buffer=False)
        yield from table.iter_batches(batch_size=BATCH_ROWS, row_groups=row_groups, columns=columns)


def row_groups(store: Store) -> int:
    """How many row groups the run's embeddings table has (0: none)."""
    try:
        with _open(store) as f:
            return pq.ParquetFile(f).num_row_groups
    except FileNotFoundError:
        return 0


def _open(store: Store) -> BinaryIO:
    """The run's table as a seekable file: a local file, or ranged reads of an S3 object."""
    f = store.stream(embeddings.NAME)
    if f.seekable():
        return f
    f.close()
    size = store.head(embeddings.NAME).size
    return io.BufferedReader(_Ranges(store, embeddings.NAME, size), buffer_size=1 << 20)


class _Ranges(io.RawIOBase):
    """A read-only, seekable file over an object, each read one ranged GET."""

    def __init__(self, store: Store, key: str, size: int):
        self.store, self.key, self.size, self.at = store, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.at, io.SEEK_END: self.size}[whence]
        self.at = max(0, base + offset)
        return self.at

    def readinto(self, buffer) -> int:
        stop = min(self.size, self.at + len(buffer))
        if stop <= self.at:
            return 0
        data = self.store.get_range(self.key, self.at, stop)
        buffer[: len(data)] = data
        self.at += len(data)
        return len(data)


def stored_vector(
    stores: Iterable[Store], key: str, begin_s: float, class_name: str, *, windows: bool = False
) -> tuple[np.ndarray, int]:
    """The stored vector of a detection (source key, window start, class) in the first of the
    runs' ``stores`` that has it, or with ``windows`` its window's; and the window's index."""
    for store in stores:
        for batch in run_batches(store):
            hit = pc.and_(
                pc.equal(batch.column("source_key"), key),
                pc.less(pc.abs(pc.subtract(batch.column("begin_s"), begin_s)), 5e-4),
            )
            rows = batch.filter(pc.fill_null(hit, False))
            names = rows.column("class_name").to_pylist()
            if class_name in names:  # the detection's row, or its window's
                i = names.index(None if windows else class_name)
                return vectors(rows.slice(i, 1))[0], rows.column("window_index")[i].as_py()
    raise InvalidParams(f"no detection {detection_id(key, begin_s, class_name)} in the runs")


def scan(
    batches: Iterable[pa.RecordBatch],
    query: np.ndarray,
    *,
    top: int = 10,
    windows: bool = False,
    class_name: str | None = None,
    min_similarity: float | None = None,
    exclude: Iterable[tuple[str, int]] = (),
    device: str | torch.device = "cpu",
) -> pa.Table:
    """The ``top`` rows most like ``query`` (dim,), best first, with their ``similarity``.

    Compares boxes (the detections' rows) or, with ``windows``, the windows' rows: one row a
    window either way, as a window's detections share its call's vector (its first explained
    class's row, the most probable unless the run named its classes, stands for them).
    ``class_name`` keeps one class's detections; ``exclude`` leaves out windows by (source
    key, window index).  Ties keep the earlier row.  The products run on ``device`` (each row
    group is copied there); a row's similarity does not depend on the device or its neighbours
    beyond float32 rounding.
    """
    q = np.asarray(query, dtype=np.float32)
    q = torch.from_numpy(q / max(float(np.linalg.norm(q)), 1e-12)).to(device)
    skip = {(key, int(window)) for key, window in exclude}  # lists, when they came as JSON
    best: pa.Table | None = None
    for batch in batches:
        keep = pc.is_null(batch.column("class_name"))
        if not windows:
            keep = pc.invert(keep)
        if class_name is not None:
            keep = pc.and_(keep, pc.equal(batch.column("class_name"), class_name))
        keep = pc.fill_null(keep, False)
        if not pc.all(keep).as_py():
            batch = batch.filter(keep)
        if not windows:
            batch = _first_of_each_window(batch)
        if not batch.num_rows:
            continue
        sims = _similarities(vectors(batch), q, top=top + len(skip))  # some may be skipped
        if min_similarity is not None:
            sims[sims < min_similarity] = -np.inf
        if skip:
            keys, idx = (batch.column(n).to_pylist() for n in ("source_key", "window_index"))
            gone = [(k, i) in skip for k, i in zip(keys, idx, strict=True)]
            sims[np.array(gone, dtype=bool)] = -np.inf
        # the rows compared exactly (few: the top and those within rounding of it), best first,
        # ties in row order: a window's detections share its call's vector
        pick = np.flatnonzero(np.isfinite(sims))
        pick = pick[np.argsort(-sims[pick], kind="stable")[:top]]
        if not len(pick):
            continue
        found = pa.Table.from_batches([batch.take(pa.array(pick))]).append_column(
            "similarity", pa.array(sims[pick].astype(np.float64))
        )
        best = found if best is None else pa.concat_tables([best, found])
        if best.num_rows > top:
            best = _best(best, top)
    if best is None:
        return pa.table({"similarity": pa.array([], pa.float64())})
    return _best(best, top)


#: How far a float16 product may be from float32's: its result's rounding near 1 (2^-11), twice.
_HALF_ERROR = 2.0**-10


def _similarities(v: np.ndarray, q: torch.Tensor, *, top: int) -> np.ndarray:
    """(rows,) float32 cosines of unit float16 rows ``v`` with unit ``q``: exact (float32) for
    every row that can be among the ``top``, -inf for the others.

    One float16 product ranks every row (a tenth of the time of converting them to float32);
    the rows within its error of the ``top``-th best are then computed again in float32, each
    row on its own (a matrix product's blocking, and so its rounding, depends on the rows beside
    it).  On ``q``'s device.
    """
    with warnings.catch_warnings():  # read only, as the products read it
        warnings.filterwarnings("ignore", message=".*not writable.*")
        rows = torch.from_numpy(v).to(q.device)
    rough = (rows @ q.to(torch.float16)).float()
    if len(rough) > top:
        cut = rough.topk(top).values[-1] - _HALF_ERROR
        near = torch.nonzero(rough >= cut).squeeze(1)
    else:
        near = torch.arange(len(rough))
    out = np.full(len(rough), -np.inf, dtype=np.float32)
    out[near.cpu().numpy()] = (rows[near].float() * q).sum(dim=1).cpu().numpy()
    return out


def _first_of_each_window(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The rows of ``batch`` that begin a window's run of rows (a table holds a window's rows
    together)."""
    n = batch.num_rows
    if n < 2:
        return batch
    keys, windows = batch.column("source_key"), batch.column("window_index")
    new = pc.or_(
        pc.not_equal(keys.slice(1), keys.slice(0, n - 1)),
        pc.not_equal(windows.slice(1), windows.slice(0, n - 1)),
    )
    return batch.filter(pa.concat_arrays([pa.array([True]), new]))


def distinct_windows(keys: Sequence[str], windows: Sequence[int]) -> list[int]:
    """Indices of the rows (best first) whose window no earlier row has: a window's rows in
    two row groups, or two parts of a distributed search, count once."""
    seen: set[tuple[str, int]] = set()
    out = []
    for i, pair in enumerate(zip(keys, windows, strict=True)):
        if pair not in seen:
            seen.add(pair)
            out.append(i)
    return out


def _best(t: pa.Table, top: int) -> pa.Table:
    t = t.take(pc.sort_indices(t, sort_keys=[("similarity", "descending")]))  # stable
    keys, windows = (t.column(n).to_pylist() for n in ("source_key", "window_index"))
    return t.take(pa.array(distinct_windows(keys, windows)[:top], pa.int64()))


# -- on the workers: each part's rows come back on a Redis list of the caller's ------------------

#: How long a search's reply list outlives its last part (seconds).
REPLY_TTL_S = 600


def reply_part(r, reply: str, part: int, *, rows: list | None = None, error: str = "") -> None:
    """Push part ``part``'s ``rows`` (or its ``error``) to the caller's list ``reply``."""
    message = json.dumps({"part": part, "rows": rows or [], "error": error}, default=float)
    r.pipeline().rpush(reply, message).expire(reply, REPLY_TTL_S).execute()


def gather_parts(r, reply: str, parts: int, *, timeout_s: float) -> list[list[dict]]:
    """The rows of each of ``parts`` parts pushed to ``reply``, in part order; raises if one
    failed or they did not all come within ``timeout_s``."""
    found: dict[int, list[dict]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < parts:
            left = deadline - time.monotonic()
            got = r.blpop([reply], timeout=max(1, min(left, 5))) if left > 0 else None
            if got is None:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{parts - len(found)} of {parts} search parts did not come back within "
                        f"{timeout_s:g} s: are workers consuming this queue?"
                    )
                continue
            message = json.loads(got[1])
            if message["error"]:
                raise RuntimeError(f"search part {message['part']} failed: {message['error']}")
            found[message["part"]] = message["rows"]
    finally:
        r.delete(reply)
    return [found[i] for i in range(parts)]
