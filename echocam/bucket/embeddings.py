"""Embeddings as stored: each recording's ``embeddings.parquet``, the shards, the run's table.

Each ok recording with the ``embeddings`` output has ``<key>/embeddings.parquet``: a row per
window (no class, no box) and a row per explained class of each window (the box embedding of the
window's call, which its detections share), with the vector (unit length, float16;
``echocam.explain.embed`` computes them).  As with the manifest, each chunk of work also puts
one *shard*, ``_manifest/embeddings/<id>.parquet``, of its records' rows with each record's
digest, and compaction keeps for each source the rows of its current record, reads the few
recordings' files no shard holds, writes the run's ``embeddings.parquet`` (sorted by source
key and window) and consolidates the shards into one.  Vectors stay Arrow binaries throughout,
never Python lists.  No torch here.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from echocam.bucket.chunking import chunked
from echocam.bucket.storage import Store

if TYPE_CHECKING:
    import numpy as np  # the producer runs this package without numpy: imported where used

NAME = "embeddings.parquet"  # a recording's, under its key, and the run's, at the root
SHARDS = "_manifest/embeddings/"
BOX_COLUMNS = ("box_begin_s", "box_end_s", "box_low_hz", "box_high_hz")
#: Columns of embeddings.parquet but the vector; a window's row has no class and no box.
FIELDS = (
    ("source_key", pa.string()),
    ("window_index", pa.int32()),  # the window in its recording, from 0
    ("begin_s", pa.float64()),  # the window, seconds from the recording's start
    ("end_s", pa.float64()),
    ("class_name", pa.string()),  # null: the whole window
    ("class_id", pa.int64()),
    ("probability", pa.float64()),
    ("box", pa.string()),  # "activity" (before 2026-12-07: "call", "evidence"); null: the window
    *((name, pa.float64()) for name in BOX_COLUMNS),  # s from the recording's start, Hz
)
_ROW_GROUP = 8192
#: zstd but for the vectors: they gain a fifth from it and decode at a quarter of the speed.
COMPRESSION = {name: "zstd" for name, _ in FIELDS} | {"vector": "none", "record_digest": "zstd"}


def schema(dim: int) -> pa.Schema:
    """embeddings.parquet's schema for vectors of ``dim`` values.

    A vector is unit length (its dot product with another is their cosine similarity), stored
    as ``dim`` little-endian float16 values in one fixed-size binary: read it with
    ``numpy.frombuffer(value, numpy.float16)``.  Parquet's list of float16 decodes ~35 times
    slower, and the exact search reads every vector (``benchmarks/results/search.json``).
    float16: cosine similarities within 2e-4 of float32's, at half the bytes.
    """
    return pa.schema([*FIELDS, ("vector", pa.binary(2 * dim))])


def dim_of(t: pa.Schema) -> int:
    """How many values each vector of a table of :func:`schema` holds."""
    return t.field("vector").type.byte_width // 2


def table(columns: dict[str, list], vectors: np.ndarray) -> pa.Table:
    """An embeddings table from its columns but the vector, and (rows, dim) ``vectors`` (made
    unit length here)."""
    import numpy as np

    rows, dim = vectors.shape
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = (vectors / np.maximum(norms, 1e-12)).astype("<f2")
    vector = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(2 * dim), rows, [None, pa.py_buffer(np.ascontiguousarray(unit).tobytes())]
    )
    arrays = [pa.array(columns[name], type=t) for name, t in FIELDS]
    return pa.Table.from_arrays([*arrays, vector], schema=schema(dim))


def vectors(t: pa.Table | pa.RecordBatch) -> np.ndarray:
    """(rows, dim) float16 of the vectors of a table or batch of :func:`schema` (a view where
    it can be)."""
    import numpy as np

    column = t.column("vector")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.byte_width
    flat = np.frombuffer(
        column.buffers()[1], dtype="<f2", count=len(column) * width // 2,
        offset=column.offset * width,
    )  # fmt: skip
    return flat.reshape(len(column), width // 2)


def to_parquet(t: pa.Table, *, lean: bool = False) -> bytes:
    """``t`` as Parquet bytes.  ``lean``: a recording's own file, put once per recording and
    read only by compaction and resumes: uncompressed, without statistics, dictionaries for the
    strings alone (0.18 CPU-ms for a one-window recording against 0.48 on a 2-core EPYC, its
    file a quarter smaller; 3 % larger for a 30-minute one)."""
    buf = pa.BufferOutputStream()
    options = _LEAN if lean else _options(t.schema)
    pq.write_table(t, buf, row_group_size=_ROW_GROUP, **options)
    return buf.getvalue().to_pybytes()


def read(store: Store, key: str) -> pa.Table:
    """The embeddings file at ``key``."""
    data, _ = store.get(key)
    return pq.read_table(pa.BufferReader(data))


def write_shard(store: Store, parts: list[tuple[str, pa.Table]]) -> str | None:
    """Put one shard of (record digest, the record's embeddings) ``parts``; its key (None when
    there are none)."""
    tables = [_with_digest(t, digest) for digest, t in parts]
    if not tables:
        return None
    key = _shard_key()
    store.put(key, to_parquet(pa.concat_tables(tables)))
    return key


def _shard_key() -> str:
    return f"{SHARDS}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex}.parquet"


def _options(t: pa.Schema) -> dict[str, Any]:
    """How a table of ``t`` is written: :data:`COMPRESSION`, and no statistics for the vectors
    (a min and max of 1-kB values: half a one-window recording's file)."""
    return {
        "compression": {name: COMPRESSION[name] for name in t.names},
        "write_statistics": [name for name in t.names if name != "vector"],
    }


_LEAN = {
    "compression": "none",
    "use_dictionary": [name for name, t in FIELDS if t == pa.string()],
    "write_statistics": False,
}


def _with_digest(t: pa.Table, digest: str) -> pa.Table:
    return t.append_column("record_digest", pa.array([digest] * t.num_rows, pa.string()))


def shard_keys(store: Store, *, page_size: int) -> list[str]:
    return [k for k in store.keys(under=SHARDS, page_size=page_size) if k.endswith(".parquet")]


def compact(
    store: Store,
    con,
    tmp: str,
    *,
    pool,
    page_size: int,
    min_probability: float,
    class_min_probability: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Write the run's embeddings.parquet from the shards and table ``kept`` (the manifest row
    of each source's current record, as ``echocam.bucket.manifest`` keeps it, with its digest);
    consolidate the shards.

    Detections below ``min_probability`` (their class's in ``class_min_probability``, where it
    names it) are left out of the run's table (windows never).
    Returns what the summary tells of it.
    """
    keys = shard_keys(store, page_size=page_size)
    folder = Path(tmp, "embeddings")
    folder.mkdir()

    def fetch(i_key: tuple[int, str]) -> None:
        i, key = i_key
        try:
            data, _ = store.get(key)
        except FileNotFoundError:
            return  # another compaction consolidated it
        Path(folder, f"{i:08d}.parquet").write_bytes(data)

    for some in chunked(enumerate(keys), 256):
        list(pool.map(fetch, some))
    glob = f"{folder}/*.parquet"
    have = any(folder.iterdir())
    # The current records' rows, from one shard per source: a chunk done twice put two.
    if have:
        con.execute(
            f"""CREATE TABLE emb AS
                SELECT e.* EXCLUDE (filename) FROM read_parquet('{glob}', filename=true) e
                SEMI JOIN kept k USING (source_key, record_digest)
                QUALIFY dense_rank() OVER (PARTITION BY source_key ORDER BY filename) = 1"""
        )
    # Ok records no shard holds (read by compaction, or older than embeddings): their files.
    todo = con.sql(
        "SELECT embeddings_key, record_digest FROM kept WHERE embeddings_key IS NOT NULL"
        + (" AND source_key NOT IN (SELECT source_key FROM emb)" if have else "")
    ).fetchall()

    def file(key_digest: tuple[str, str]) -> pa.Table | None:
        key, digest = key_digest
        try:
            return _with_digest(read(store, key), digest)
        except FileNotFoundError:
            return None  # replaced since: the next compaction finds its successor

    extra = [t for t in pool.map(file, todo) if t is not None]
    if extra:
        path = Path(tmp, "embeddings-extra.parquet")
        pq.write_table(pa.concat_tables(extra), path)
        sql = f"SELECT * FROM read_parquet('{path}')"
        con.execute(f"INSERT INTO emb {sql}" if have else f"CREATE TABLE emb AS {sql}")
        have = True
    if not have:
        return {"embeddings": 0, "embeddings_shard": None}
    kept, run_table = Path(tmp, "embeddings-kept.parquet"), Path(tmp, NAME)
    con.execute("CREATE OR REPLACE TEMP TABLE class_min (class_name VARCHAR, p DOUBLE)")
    if class_min_probability:
        con.executemany(
            "INSERT INTO class_min VALUES (?, ?)",
            [[name, float(p)] for name, p in class_min_probability.items()],
        )
    rows = con.sql(
        f"""SELECT emb.* FROM emb LEFT JOIN class_min m ON emb.class_name = m.class_name
            WHERE emb.class_name IS NULL
               OR emb.probability >= coalesce(m.p, {float(min_probability)!r})
            ORDER BY source_key, window_index, class_id NULLS FIRST"""
    )
    n = _write(rows.to_arrow_reader(_ROW_GROUP), run_table, digest=False)
    shard = None
    if n:
        _write(con.sql("SELECT * FROM emb").to_arrow_reader(_ROW_GROUP), kept, digest=True)
        store.put_file(NAME, run_table)
        shard = _shard_key()
        store.put_file(shard, kept)  # first: the rows are never only in shards being deleted
    for some in chunked(keys, 1000):
        store.delete(list(some))
    return {"embeddings": n, "embeddings_shard": shard}


def _write(reader: pa.RecordBatchReader, path: Path, *, digest: bool) -> int:
    """Stream DuckDB's batches (vectors as variable-length blobs) to ``path`` as
    :func:`schema`'s, with the record digest where ``digest``; the rows written (no file when
    none)."""
    n, writer = 0, None
    try:
        for batch in reader:
            if not batch.num_rows:
                continue
            target = schema(len(batch.column("vector")[0].as_py()) // 2)
            if digest:
                target = target.append(pa.field("record_digest", pa.string()))
            t = pa.Table.from_batches([batch]).select(target.names).cast(target)
            if writer is None:
                writer = pq.ParquetWriter(path, target, **_options(target))
            writer.write_table(t, row_group_size=_ROW_GROUP)
            n += t.num_rows
    finally:
        if writer is not None:
            writer.close()
    return n
