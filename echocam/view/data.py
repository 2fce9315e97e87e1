"""A run as the viewer reads it: run.json, summary.json, the tables (DuckDB), records, keys.

The Parquet tables are queried with DuckDB straight from a local file: the run's own file for a
directory, else a copy fetched once through the store (ranged reads of 8 MiB) and fetched again
when the object's size or ETag changes.  Queries filter, sort and page on the server
(``ORDER BY ... LIMIT ... OFFSET``), so a page costs the same for a thousand or a million rows.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echocam.bucket.keys import output_key
from echocam.bucket.manifest import DETECTIONS_PARQUET, MANIFEST_PARQUET, SUMMARY
from echocam.bucket.records import RECORD_NAME
from echocam.bucket.runs import RUN_NAME
from echocam.bucket.storage import LocalStore, Store, open_store, read_json

#: What the viewer serves from under the run: the outputs echocam writes, nothing else.
IMAGE_SUFFIXES = (".png", ".jpg", ".webp")
SERVED_SUFFIXES = (*IMAGE_SUFFIXES, ".npz", ".json", ".txt", ".csv", ".jsonl", ".parquet", ".html")
AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".mp3": "audio/mpeg",
}
_CHUNK = 8 * 1024 * 1024
_RECHECK_S = 10.0  # how often a cached table copy is compared with the store's object


class BadKey(ValueError):
    """A requested key that is not a plain relative key under the run."""


def safe_key(key: str, *, suffixes: tuple[str, ...] = SERVED_SUFFIXES) -> str:
    """``key`` when it is a relative key with no ``.``/``..``/empty component, else BadKey.

    Rejects absolute keys, backslashes, control characters and names outside ``suffixes``; a
    local store also refuses keys that resolve (symlinks included) outside its root.
    """
    if not key or key.startswith("/") or "\\" in key:
        raise BadKey(key)
    if any(ord(c) < 32 or c == "\x7f" for c in key):
        raise BadKey(key)
    if any(seg in ("", ".", "..") for seg in key.split("/")):
        raise BadKey(key)
    if not key.lower().endswith(suffixes):
        raise BadKey(key)
    return key


# The gallery's sort orders: name → ORDER BY (fixed strings: no user text reaches the SQL).
SORTS = {
    "key": "source_key",
    "probability": "top_probability DESC NULLS LAST, source_key",
    "probability_asc": "top_probability ASC NULLS LAST, source_key",
    "duration": "duration_s DESC NULLS LAST, source_key",
    "finished": "finished_at DESC NULLS LAST, source_key",
}
DETECTION_SORTS = {
    "probability": "probability DESC, source_key, begin_s",
    "time": "source_key, begin_s, class_name",
    "class": "class_name, probability DESC, source_key",
}
GALLERY_COLUMNS = (
    "source_key, status, error_code, error_message, duration_s, n_windows, top_class_name, "
    "top_probability, overlay_key, spectrogram_key, record_key"
)


@dataclass
class Filters:
    """The gallery's filters, from query parameters (all optional)."""

    klass: str = ""
    pmin: float | None = None
    pmax: float | None = None
    status: str = ""
    code: str = ""
    q: str = ""  # part of the source key

    @classmethod
    def parse(cls, query: dict[str, str]) -> Filters:
        return cls(
            klass=query.get("class", ""),
            pmin=_float(query.get("pmin")),
            pmax=_float(query.get("pmax")),
            status=query.get("status", ""),
            code=query.get("code", ""),
            q=query.get("q", ""),
        )

    def where(self, *, class_col: str, prob_col: str, table: str) -> tuple[str, list[Any]]:
        terms, args = [], []
        if self.klass:
            terms.append(f"{class_col} = ?")
            args.append(self.klass)
        if self.pmin is not None:
            terms.append(f"{prob_col} >= ?")
            args.append(self.pmin)
        if self.pmax is not None:
            terms.append(f"{prob_col} <= ?")
            args.append(self.pmax)
        if self.q:
            terms.append("contains(lower(source_key), ?)")
            args.append(self.q.lower())
        if table == "manifest":
            if self.status:
                terms.append("status = ?")
                args.append(self.status)
            if self.code:
                terms.append("error_code = ?")
                args.append(self.code)
        return (" WHERE " + " AND ".join(terms)) if terms else "", args


def _float(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw not in (None, "") else None
    except ValueError:
        return None
    return value if value is None or value == value else None  # NaN is no bound


@dataclass
class _Cached:
    path: Path
    version: tuple[int, Any]  # size and ETag (S3) or mtime (local)
    checked: float
    facets: dict[str, Any] = field(default_factory=dict)  # per-version query results


class RunData:
    """One run under ``store``: its description, tables and records."""

    def __init__(
        self,
        store: Store,
        *,
        input_store_factory=None,
        min_probability: float = 0.0,
        class_min_probability: dict[str, float] | None = None,
    ):
        self.store = store
        # the detections shown (pages, report): at least these probabilities (``--min-probability
        # P|FILE.json``), on top of the run's own
        self.min_probability = float(min_probability)
        self.class_min_probability = dict(class_min_probability or {})
        self._lock = threading.Lock()
        self._tables: dict[str, _Cached] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="echocam-view-")
        self._input_store_factory = input_store_factory or open_store
        self._input: Store | None = None
        self._json_cache: dict[str, tuple[float, dict[str, Any]]] = {}

    @classmethod
    def open(cls, uri: str, *, client_factory=None, **minimums: Any) -> RunData:
        """The run at ``uri``; ``minimums``: ``min_probability``, ``class_min_probability``."""
        store = open_store(uri, client_factory=client_factory)
        return cls(
            store,
            input_store_factory=lambda u: open_store(u, client_factory=client_factory),
            **minimums,
        )

    def close(self) -> None:
        self._tmp.cleanup()

    # run-level JSON, read again after a few seconds (a run may still be going)
    def _json(self, key: str) -> dict[str, Any]:
        now = time.monotonic()
        hit = self._json_cache.get(key)
        if hit is None or now - hit[0] > _RECHECK_S:
            hit = (now, read_json(self.store, key) or {})
            self._json_cache[key] = hit
        return hit[1]

    def run(self) -> dict[str, Any]:
        return self._json(RUN_NAME)

    def summary(self) -> dict[str, Any]:
        return self._json(SUMMARY)

    def params(self) -> dict[str, Any]:
        return self.run().get("params") or self.summary().get("params") or {}

    def has_embeddings(self) -> bool:
        """Whether the run's last compaction wrote its embeddings table (for more like this)."""
        return bool(self.summary().get("embeddings"))

    # records and files
    def record(self, source_key: str) -> dict[str, Any] | None:
        """The record of ``source_key`` when there is one, written for that source."""
        key = output_key(source_key, RECORD_NAME)
        try:
            record = read_json(self.store, key)
        except (ValueError, OSError):
            return None
        if not record or record.get("source_key") != source_key:
            return None
        return record

    def get(self, key: str) -> bytes:
        """An output's bytes (``key`` checked by :func:`safe_key`)."""
        try:
            data, _ = self.store.get(safe_key(key))
        except ValueError as e:  # a local key that resolves outside the root
            raise BadKey(key) from e
        return data

    def input_store(self) -> Store:
        if self._input is None:
            uri = self.run().get("input")
            if not uri:
                raise FileNotFoundError("run.json names no input")
            self._input = self._input_store_factory(uri)
        return self._input

    # tables
    def table(self, name: str) -> Path | None:
        """A local path of table ``name`` (manifest.parquet, ...), or None when the run has none."""
        # A replaced copy stays on disk (a query may be reading it) until the viewer closes.
        with self._lock:
            cached = self._tables.get(name)
            now = time.monotonic()
            if cached is not None and now - cached.checked < _RECHECK_S:
                return cached.path
            try:
                info = self.store.head(name)
            except FileNotFoundError:
                self._tables.pop(name, None)
                return None
            local = isinstance(self.store, LocalStore)
            path = self.store.root / name if local else None
            version = (info.size, path.stat().st_mtime_ns if path else info.etag)
            if cached is not None and cached.version == version:
                cached.checked = now
                return cached.path
            if path is None:  # a copy, fetched in ranged reads
                path = Path(self._tmp.name) / f"{time.time_ns()}-{name}"
                with path.open("wb") as f:
                    for start in range(0, info.size, _CHUNK):
                        f.write(self.store.get_range(name, start, start + _CHUNK))
            self._tables[name] = _Cached(path, version, now)
            return path

    def query(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        import duckdb

        con = duckdb.connect()
        try:
            cur = con.execute(sql, args)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        finally:
            con.close()

    def _facet(self, name: str, key: str, sql: str) -> list[dict[str, Any]]:
        path = self.table(name)
        if path is None:
            return []
        cached = self._tables[name]
        if key not in cached.facets:
            cached.facets[key] = self.query(sql, [str(path)])
        return cached.facets[key]

    def classes(self) -> list[dict[str, Any]]:
        """Top classes of the recordings with counts, most frequent first."""
        return self._facet(
            MANIFEST_PARQUET,
            "classes",
            "SELECT top_class_name AS name, count(*) AS n FROM read_parquet(?) "
            "WHERE top_class_name IS NOT NULL GROUP BY 1 ORDER BY n DESC, name",
        )

    def detections_source(self) -> tuple[str, list[Any]] | None:
        """(FROM clause, its arguments) of the detections shown: the run's table, less those
        under the viewer's minimum probabilities; None when the run has no table."""
        path = self.table(DETECTIONS_PARQUET)
        if path is None:
            return None
        per = self.class_min_probability
        if not per and not self.min_probability:
            return "read_parquet(?)", [str(path)]
        cases = " ".join("WHEN ? THEN ?" for _ in per)
        minimum = f"CASE class_name {cases} ELSE ? END" if per else "?"
        args = [str(path), *(v for pair in per.items() for v in pair), self.min_probability]
        return f"(SELECT * FROM read_parquet(?) WHERE probability >= {minimum})", args

    def detection_classes(self) -> list[dict[str, Any]]:
        source = self.detections_source()
        if source is None:
            return []
        cached = self._tables[DETECTIONS_PARQUET]
        if "classes" not in cached.facets:
            src, args = source
            cached.facets["classes"] = self.query(
                "SELECT class_name AS name, count(*) AS n, avg(probability) AS mean_p, "
                f"max(probability) AS max_p FROM {src} GROUP BY 1 ORDER BY n DESC, name",
                args,
            )
        return cached.facets["classes"]

    def counts(self) -> dict[str, list[dict[str, Any]]]:
        """Recordings by status and by error code."""
        return {
            "status": self._facet(
                MANIFEST_PARQUET,
                "status",
                "SELECT status AS name, count(*) AS n FROM read_parquet(?) GROUP BY 1 "
                "ORDER BY n DESC, name",
            ),
            "code": self._facet(
                MANIFEST_PARQUET,
                "codes",
                "SELECT error_code AS name, count(*) AS n FROM read_parquet(?) "
                "WHERE error_code IS NOT NULL GROUP BY 1 ORDER BY n DESC, name",
            ),
        }

    def recordings(
        self, filters: Filters, *, sort: str = "key", offset: int = 0, limit: int = 48
    ) -> tuple[int, list[dict[str, Any]]]:
        """(rows matching, one page of them) from manifest.parquet."""
        path = self.table(MANIFEST_PARQUET)
        if path is None:
            return 0, []
        where, args = filters.where(
            class_col="top_class_name", prob_col="top_probability", table="manifest"
        )
        src = "read_parquet(?)"
        total = self.query(f"SELECT count(*) AS n FROM {src}{where}", [str(path), *args])[0]["n"]
        rows = self.query(
            f"SELECT {GALLERY_COLUMNS} FROM {src}{where} ORDER BY {SORTS.get(sort, SORTS['key'])} "
            "LIMIT ? OFFSET ?",
            [str(path), *args, int(limit), max(0, int(offset))],
        )
        return total, rows

    def detections(
        self, filters: Filters, *, sort: str = "probability", offset: int = 0, limit: int = 50
    ) -> tuple[int, list[dict[str, Any]]]:
        """(detections matching, one page of them) from detections.parquet."""
        source = self.detections_source()
        if source is None:
            return 0, []
        src, src_args = source
        where, args = filters.where(class_col="class_name", prob_col="probability", table="det")
        total = self.query(f"SELECT count(*) AS n FROM {src}{where}", [*src_args, *args])[0]["n"]
        order = DETECTION_SORTS.get(sort, DETECTION_SORTS["probability"])
        rows = self.query(
            f"SELECT * FROM {src}{where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*src_args, *args, int(limit), max(0, int(offset))],
        )
        return total, rows

    def failed(self, code: str = "", *, offset: int = 0, limit: int = 100) -> tuple[int, list]:
        """(failed recordings with ``code`` (any if empty), one page of them)."""
        return self.recordings(
            Filters(status="failed", code=code), sort="key", offset=offset, limit=limit
        )


def audio_type(key: str) -> str | None:
    """The Content-Type of a source recording, or None when it is no audio echocam reads."""
    return AUDIO_TYPES.get(os.path.splitext(key.lower())[1])
