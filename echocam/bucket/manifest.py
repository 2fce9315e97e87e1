"""Compact per-recording records into the run's tables (manifest, detections) and summary.json.

Workers (and local mode) write, after each chunk of work, a *shard*: the manifest rows of the
records the chunk wrote or found done, with each record's digest and its detections, as one
small Parquet file under ``_manifest/shards/``.  Compaction lists the done index
(``echocam.bucket.index``: which record is current for each source) and the shards, keeps for each
source the row of its current record (a join in DuckDB, on disk past its memory limit), reads
only the records the index is unsure of or that no shard holds, and writes the tables.  So a
run of N recordings costs about N/1000 listing requests and one GET per chunk, not one per
recording.  It then uploads the rows it kept as one shard and deletes the shards it read, so
the next compaction reads one object plus what is new; and it folds the index: the markers of
the records kept go into one sorted segment (``echocam.bucket.index``), which replaces the segments
and the folder markers it read, so the next listing of the index holds only what is new.
Output prefixes written before the index (no ``_manifest/index.json``) are compacted the old
way, every record read, once: that pass writes their segment and the sentinel.  Rows stream in
batches throughout.  No torch here.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from echocam.bucket import detections, embeddings, index
from echocam.bucket.chunking import chunked
from echocam.bucket.index import Stored
from echocam.bucket.records import RECORD_NAME, now_iso, record_key
from echocam.bucket.storage import Store, read_json

MANIFEST_JSONL, MANIFEST_PARQUET, SUMMARY = "manifest.jsonl", "manifest.parquet", "summary.json"
DETECTIONS_CSV, DETECTIONS_PARQUET = "detections.csv", "detections.parquet"
#: The tables the manifest step writes, text and Parquet of each.
OUTPUT_NAMES = (MANIFEST_JSONL, MANIFEST_PARQUET, DETECTIONS_CSV, DETECTIONS_PARQUET)

_PREDICTION = pa.struct(
    [("class_id", pa.int64()), ("class_name", pa.string()), ("probability", pa.float64())]
)
SCHEMA = pa.schema(
    [
        ("source_key", pa.string()),
        ("status", pa.string()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("source_size", pa.int64()),
        ("source_etag", pa.string()),
        ("duration_s", pa.float64()),
        ("n_windows", pa.int64()),
        ("top_class_id", pa.int64()),
        ("top_class_name", pa.string()),
        ("top_probability", pa.float64()),
        ("top_predictions", pa.list_(_PREDICTION)),
        ("record_key", pa.string()),
        ("spectrogram_key", pa.string()),
        ("overlay_key", pa.string()),
        ("cam_key", pa.string()),
        ("embeddings_key", pa.string()),
        ("fingerprint", pa.string()),
        ("model_sha256", pa.string()),
        ("weights_kind", pa.string()),
        ("finished_at", pa.string()),
    ]
)


SHARDS = "_manifest/shards/"
#: A shard's rows: a manifest row, the digest of its record, and the record's detections (all
#: of them: ``--min-probability`` applies when the tables are written).
SHARD_SCHEMA = SCHEMA.append(pa.field("record_digest", pa.string())).append(
    pa.field("detections", pa.list_(pa.struct(list(detections.SCHEMA))))
)
_ROW_GROUP = 10_000


def row(record: dict[str, Any]) -> dict[str, Any]:
    """One manifest row (flat, typed as ``SCHEMA``) from one record."""
    top = record.get("top_predictions") or []
    outputs = record.get("outputs") or {}
    return {
        "source_key": record["source_key"],
        "status": record["status"],
        "error_code": record.get("error_code"),
        "error_message": record.get("error_message"),
        "source_size": record.get("source_size"),
        "source_etag": record.get("source_etag"),
        "duration_s": record.get("duration_s"),
        "n_windows": record.get("n_windows"),
        "top_class_id": top[0]["class_id"] if top else None,
        "top_class_name": top[0]["class_name"] if top else None,
        "top_probability": top[0]["probability"] if top else None,
        "top_predictions": [
            {k: p[k] for k in ("class_id", "class_name", "probability")} for p in top
        ],
        "record_key": record["record_key"],
        "spectrogram_key": outputs.get("spectrogram"),
        "overlay_key": outputs.get("overlay"),
        "cam_key": outputs.get("cam"),
        "embeddings_key": outputs.get("embeddings"),
        "fingerprint": record.get("fingerprint"),
        "model_sha256": (record.get("model") or {}).get("sha256"),
        "weights_kind": (record.get("model") or {}).get("weights_kind"),
        "finished_at": record.get("finished_at"),
    }


def shard_row(stored: Stored) -> dict[str, Any]:
    """One shard row (``SHARD_SCHEMA``) from a record as stored."""
    return {
        **row(stored.record),
        "record_digest": stored.digest,
        "detections": list(detections.rows(stored.record)),
    }


def write_shard(store: Store, stored: Iterable[Stored]) -> str | None:
    """Put one shard of these records' rows; its key (None when there are none)."""
    rows = [shard_row(st) for st in stored]
    if not rows:
        return None
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), buf, compression="zstd")
    key = _shard_key()
    store.put(key, buf.getvalue())
    return key


def _shard_keys(store: Store, *, page_size: int) -> list[str]:
    """The shards there are now."""
    return [k for k in store.keys(under=SHARDS, page_size=page_size) if k.endswith(".parquet")]


def _shard_key() -> str:
    return f"{SHARDS}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex}.parquet"


def iter_records(store: Store, *, threads: int = 16, chunk_size: int = 2000, page_size: int = 1000):
    """Every record under the store's root, read ``threads`` at a time, in listing order."""
    keys = (o.key for o in store.list(suffixes=("/" + RECORD_NAME,), page_size=page_size))
    with ThreadPoolExecutor(threads) as pool:
        for some_keys in chunked(keys, chunk_size):
            for stored in pool.map(lambda k: index.read(store, k), some_keys):
                if stored is not None:
                    yield stored


def compact(
    store: Store, *, threads: int = 16, page_size: int = 1000, full: bool = False
) -> dict[str, Any]:
    """Write the manifest files and summary.json under ``store``; returns the summary.

    ``full``: read every record (as for outputs written before the index).  Either way the
    markers of the records kept go into one new segment of the index, which replaces the
    segments and (unless ``full``) the folder markers that were read.
    """
    from echocam.bucket.runs import RUN_NAME

    t0 = time.perf_counter()
    run = read_json(store, RUN_NAME) or {}
    full = full or read_json(store, index.COMPLETE) is None
    # Listed first: only what was listed before the folders and records were read is replaced.
    segments = index.segment_keys(store, page_size=page_size)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(threads) as pool:
        con = _duckdb(tmp)
        if full:
            consumed = _kept_from_records(store, con, tmp, page_size=page_size)
        else:
            consumed = _kept_from_index(
                store, con, tmp, segments=segments, pool=pool, page_size=page_size
            )
        summary = _write_tables(store, con, tmp, run)
        summary |= embeddings.compact(
            store, con, tmp, pool=pool, page_size=page_size,
            min_probability=summary["min_probability"],
            class_min_probability=summary["class_min_probability"],
        )  # fmt: skip
        segment = _fold(con, tmp)
        con.close()
        summary["shard"] = _consolidate(store, Path(tmp, "kept.parquet"), consumed, pool=pool)
        # full: no folder marker was listed, so none is folded
        listed = [] if full else [Path(tmp, "listed.parquet"), Path(tmp, "folders.parquet")]
        summary["segment"] = _replace_index(
            store, segment, old_segments=segments, listed=listed, pool=pool
        )
        if full:
            store.put(index.COMPLETE, b'{"version": 1}\n')
    summary["compaction_s"] = round(time.perf_counter() - t0, 3)
    store.put(SUMMARY, (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def _duckdb(tmp: str):
    import duckdb

    con = duckdb.connect(str(Path(tmp, "compact.duckdb")))
    # Bounded memory for any number of rows: past this, joins and sorts spill to disk.
    con.execute(f"SET memory_limit='512MB'; SET temp_directory='{Path(tmp, 'spill')}'")
    con.execute("SET preserve_insertion_order=false")
    return con


def _parquet_writer(path: Path, rows: Iterator[dict[str, Any]]) -> int:
    """Write ``rows`` (``SHARD_SCHEMA``) to ``path`` a row group at a time; how many."""
    n = 0
    with pq.ParquetWriter(path, SHARD_SCHEMA) as w:
        for some in chunked(rows, _ROW_GROUP):
            w.write_table(pa.Table.from_pylist(some, schema=SHARD_SCHEMA))
            n += len(some)
    return n


def _load(con, table: str, path: Path) -> None:
    con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM read_parquet('{path}')")


def _kept_from_index(
    store: Store, con, tmp: str, *, segments: list[str], pool, page_size: int
) -> list[str]:
    """The current record's row of every source into table ``kept``; the shards read.

    Also ``listed.parquet``: the keys of the folder markers listed (folded once the new segment
    is up: each is then in it, or stale), and ``folders.parquet``: their folders.
    """
    # Which record is current, per source: the union of its folder's markers and the segments'
    # (digest NULL: unsure, read the record).
    entries = Path(tmp, "entries.parquet")
    schema = pa.schema(
        [("source_key", pa.string()), ("name", pa.string()), ("digest", pa.string()),
         ("dead", pa.bool_()), ("key", pa.string())]
    )  # fmt: skip
    with pq.ParquetWriter(entries, schema) as w:
        for some in chunked(_entries(store, segments, page_size=page_size), _ROW_GROUP):
            w.write_table(pa.Table.from_pylist(
                [{"source_key": src, "name": m and m.name, "digest": m and m.digest,
                  "dead": dead, "key": key} for src, m, dead, key in some], schema=schema,
            ))  # fmt: skip
    # markers and tombstones (intents stay: their writers delete them)
    markers = f"SELECT key FROM read_parquet('{entries}') WHERE key NOT NULL AND name NOT NULL"
    con.execute(f"COPY ({markers}) TO '{Path(tmp, 'listed.parquet')}'")
    # Their folders too, once empty: servers that keep a directory tree (SeaweedFS) keep empty
    # folders, and walk each on every listing of the index.  Such a server deletes a folder
    # only if it is empty; elsewhere no object has that key.
    folders = f"SELECT DISTINCT regexp_replace(key, '[^/]*$', '') AS key FROM ({markers})"
    con.execute(f"COPY ({folders}) TO '{Path(tmp, 'folders.parquet')}'")
    con.execute(
        f"""CREATE TABLE idx AS
            WITH e AS (SELECT * FROM read_parquet('{entries}')),
                 dead AS (SELECT DISTINCT source_key, name FROM e WHERE dead)
            SELECT source_key,
                   CASE WHEN count(*) FILTER (WHERE name IS NULL) = 0
                         AND count(DISTINCT name) = 1 THEN min(digest) END AS digest
            FROM (SELECT * FROM e WHERE NOT dead) ANTI JOIN dead USING (source_key, name)
            GROUP BY source_key"""
    )
    # Every shard, fetched to disk (one GET each).
    shard_dir = Path(tmp, "shards")
    shard_dir.mkdir()
    keys = _shard_keys(store, page_size=page_size)

    def fetch(i_key: tuple[int, str]) -> None:
        i, key = i_key
        try:
            data, _ = store.get(key)
        except FileNotFoundError:
            return  # another compaction consolidated it: its rows are in that one's shard
        Path(shard_dir, f"{i:08d}.parquet").write_bytes(data)

    for some in chunked(enumerate(keys), 256):
        list(pool.map(fetch, some))
    _parquet_writer(Path(shard_dir, "empty.parquet"), iter(()))  # the schema, if no shard
    # by name: shards written before a column was added lack it (NULL)
    con.execute(
        f"""CREATE TABLE shard AS SELECT * FROM read_parquet('{shard_dir}/*.parquet',
            union_by_name=true)"""
    )
    con.execute(
        """CREATE TABLE kept AS
           SELECT s.* FROM shard s JOIN idx i
             ON s.source_key = i.source_key AND s.record_digest = i.digest
           QUALIFY row_number() OVER (PARTITION BY s.source_key) = 1"""
    )
    # What the shards cannot answer: unsure sources, current records no shard holds, and
    # sources with rows but no index folder (keys too long for a marker).  Read those records.
    todo = con.sql(
        """SELECT source_key FROM idx WHERE digest IS NULL
           UNION SELECT i.source_key FROM idx i ANTI JOIN kept k USING (source_key)
             WHERE i.digest IS NOT NULL
           UNION SELECT DISTINCT s.source_key FROM shard s ANTI JOIN idx i USING (source_key)"""
    ).to_arrow_reader(_ROW_GROUP)

    def read_rows() -> Iterator[dict[str, Any]]:
        for batch in todo:
            sources = batch.column(0).to_pylist()
            for st in pool.map(lambda k: index.read(store, record_key(k)), sources):
                if st is not None:
                    yield shard_row(st)

    extra = Path(tmp, "extra.parquet")
    if _parquet_writer(extra, read_rows()):
        con.execute(f"INSERT INTO kept SELECT * FROM read_parquet('{extra}')")
    con.execute("DROP TABLE shard")
    return keys


def _kept_from_records(store: Store, con, tmp: str, *, page_size: int) -> list[str]:
    """Every record's row into table ``kept``, read one by one.

    Returns the shards there were (the rows kept hold every current record: they go).
    """
    kept = Path(tmp, "records.parquet")
    _parquet_writer(kept, (shard_row(st) for st in iter_records(store, page_size=page_size)))
    _load(con, "kept", kept)
    return list(store.keys(under=SHARDS, page_size=page_size))


def _entries(store: Store, segments: list[str], *, page_size: int):
    """(source, marker or None, tombstone?, key or None) for each object in the index's folders
    and each line of the segments."""
    for source, name, key in index.listed(store, page_size=page_size):
        yield source, *index.parse_name(name), key
    # a segment gone since it was listed: the compaction that deleted it put its markers in one
    # this one did not list (and will not delete)
    for group in index.folded(store, segments, missing_ok=True):
        for marker in [*group.markers, *([None] if group.other else [])]:
            yield group.source, marker, False, None


def _fold(con, tmp: str) -> Path:
    """The kept records' markers as a new segment file (sorted by source); its path."""
    path = Path(tmp, "segment.tsv.gz")
    rows = con.sql(
        """SELECT source_key, source_etag, fingerprint, record_digest, status, error_code
           FROM kept ORDER BY source_key"""
    ).to_arrow_reader(_ROW_GROUP)
    index.write_segment(
        path,
        (
            (r["source_key"], index.Marker.of(r, r["record_digest"]))
            for batch in rows
            for r in batch.to_pylist()
        ),
    )
    return path


def _write_tables(store: Store, con, tmp: str, run: dict[str, Any]) -> dict[str, Any]:
    """The manifest and detections tables from table ``kept`` (sorted by source key), and the
    kept rows as ``kept.parquet`` for :func:`_consolidate`; returns the summary."""
    statuses: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    windows = 0
    audio_s = 0.0
    stale = 0
    last_finished = ""
    params = run.get("params") or {}
    min_probability = params.get("min_probability", 0.0)
    per_class = params.get("class_min_probability") or {}
    n_detections = 0
    files = [Path(tmp, name) for name in OUTPUT_NAMES]
    batches = con.sql("SELECT * FROM kept ORDER BY source_key").to_arrow_reader(_ROW_GROUP)
    with (
        _Table(files[0], files[1], SCHEMA, text="jsonl") as manifest,
        _Table(files[2], files[3], detections.SCHEMA, text="csv") as found,
        pq.ParquetWriter(Path(tmp, "kept.parquet"), SHARD_SCHEMA) as kept,
    ):
        for batch in batches:
            rows = batch.to_pylist()
            kept.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
            for r in rows:
                dets = r.pop("detections") or []
                r.pop("record_digest")
                statuses[r["status"]] += 1
                if r["error_code"]:
                    codes[r["error_code"]] += 1
                windows += r["n_windows"] or 0
                audio_s += r["duration_s"] or 0.0
                if run.get("fingerprint") and r["fingerprint"] != run["fingerprint"]:
                    stale += 1
                last_finished = max(last_finished, r["finished_at"] or "")
                manifest.add(r)
                for d in dets:
                    if d["probability"] >= per_class.get(d["class_name"], min_probability):
                        found.add(d)
                        n_detections += 1
    total = sum(statuses.values())
    wall = _wall_seconds(run.get("created_at"), last_finished)
    for path in files:
        store.put_file(path.name, path)
    return {
        "recordings": total,
        "by_status": dict(statuses),
        "by_error_code": dict(codes),
        "stale_fingerprint": stale,
        "windows": windows,
        "detections": n_detections,
        "min_probability": min_probability,
        "class_min_probability": per_class,
        "audio_seconds": round(audio_s, 3),
        "run_id": run.get("run_id"),
        "fingerprint": run.get("fingerprint"),
        "model": run.get("model"),
        "params": run.get("params"),
        "input": run.get("input"),
        "output": store.uri,
        "started_at": run.get("created_at"),
        "finished_at": last_finished or None,
        "wall_s": wall,
        "recordings_per_s": round(total / wall, 3) if wall else None,
        "windows_per_s": round(windows / wall, 3) if wall else None,
        "compacted_at": now_iso(),
    }


def _consolidate(store: Store, kept: Path, consumed: list[str], *, pool) -> str | None:
    """Upload the kept rows as one shard, then delete the shards they came from; its key."""
    key = None
    if pq.ParquetFile(kept).metadata.num_rows:
        key = _shard_key()
        store.put_file(key, kept)  # first: the rows are never only in shards being deleted
    _delete(store, iter([consumed]), pool=pool)
    return key


#: Delete requests of up to 1000 keys in flight at once: a million markers are a thousand
#: requests, and against S3, where a request is mostly waiting, they overlap (a server that is
#: itself the bound, as a single SeaweedFS, gains little from more).
DELETES_IN_FLIGHT = 8


def _delete(store: Store, batches: Iterator[list[str]], *, pool) -> None:
    """Delete the keys of ``batches`` (lists of up to 1000), several requests at a time."""
    some_keys = (some for batch in batches for some in chunked(batch, 1000))
    for in_flight in chunked(some_keys, DELETES_IN_FLIGHT):
        list(pool.map(store.delete, in_flight))


def up_to_date(store: Store, *, page_size: int = 1000) -> bool:
    """Whether nothing was written under ``store`` since its last compaction, which would then
    rewrite the same tables: its summary names the one shard and the one segment there are
    (every chunk of work writes a shard, a redelivered one too).  Four requests, whatever the
    number of records, and no listing of the index's folders."""
    summary = read_json(store, SUMMARY)
    if summary is None or "segment" not in summary or read_json(store, index.COMPLETE) is None:
        return False
    shards = _shard_keys(store, page_size=page_size)
    return shards == [k for k in [summary["shard"]] if k] and index.segment_keys(
        store, page_size=page_size
    ) == [summary["segment"]]


def _replace_index(
    store: Store, segment: Path, *, old_segments: list[str], listed: list[Path], pool
) -> str:
    """Upload the new segment, then delete the segments and folder markers it replaces (the
    keys in the files ``listed``, one file after the other); the new segment's key.

    In this order, every current record's marker is in a folder or a segment at every moment
    (see ``echocam.bucket.index``): the new segment holds the marker of each source's current record
    as this compaction found it, and a marker it folded that is no longer current is stale.
    """
    key = index.segment_key()
    store.put_file(key, segment)
    store.delete(old_segments)
    for path in listed:  # the markers before their folders: a folder goes only once empty
        batches = pq.ParquetFile(path).iter_batches(batch_size=1000)
        _delete(store, (batch.column(0).to_pylist() for batch in batches), pool=pool)
    return key


class _Table:
    """Rows of one schema streamed to a text file (JSON lines or CSV) and a Parquet file."""

    def __init__(self, text_path: Path, parquet_path: Path, schema: pa.Schema, *, text: str):
        self.schema = schema
        self.text = text_path.open("w", encoding="utf-8", newline="")
        self.parquet = pq.ParquetWriter(parquet_path, schema)
        self.csv = None
        if text == "csv":
            self.csv = csv.DictWriter(self.text, fieldnames=schema.names, lineterminator="\n")
            self.csv.writeheader()
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        if self.csv is not None:
            self.csv.writerow(row)
        else:
            self.text.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows.append(row)
        if len(self.rows) >= 10_000:  # bounded memory: a row group at a time
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.parquet.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows.clear()

    def __enter__(self) -> _Table:
        return self

    def __exit__(self, *exc: object) -> None:
        self._flush()
        self.parquet.close()
        self.text.close()


def _wall_seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return round(max(delta.total_seconds(), 0.0), 3)
