"""Compact per-recording records into the run's tables (manifest, detections) and summary.json.

Streams: records are read concurrently in bounded chunks and written row by row, so a million
recordings need memory for one chunk, not for the whole manifest.  No torch here.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from echocam import detections
from echocam.chunking import chunked
from echocam.records import RECORD_NAME, now_iso
from echocam.runs import RUN_NAME
from echocam.storage import Store, read_json

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
        ("fingerprint", pa.string()),
        ("model_sha256", pa.string()),
        ("weights_kind", pa.string()),
        ("finished_at", pa.string()),
    ]
)


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
        "fingerprint": record.get("fingerprint"),
        "model_sha256": (record.get("model") or {}).get("sha256"),
        "weights_kind": (record.get("model") or {}).get("weights_kind"),
        "finished_at": record.get("finished_at"),
    }


def iter_records(store: Store, *, threads: int = 16, chunk_size: int = 2000, page_size: int = 1000):
    """Every record under the store's root, read ``threads`` at a time, in listing order."""
    keys = (o.key for o in store.list(suffixes=("/" + RECORD_NAME,), page_size=page_size))
    with ThreadPoolExecutor(threads) as pool:
        for some_keys in chunked(keys, chunk_size):
            for record in pool.map(lambda k: read_json(store, k), some_keys):
                if record is not None:
                    yield record


def compact(store: Store, *, threads: int = 16, page_size: int = 1000) -> dict[str, Any]:
    """Write the manifest files and summary.json under ``store``; returns the summary."""
    t0 = time.perf_counter()
    run = read_json(store, RUN_NAME) or {}
    statuses: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    windows = 0
    audio_s = 0.0
    stale = 0
    last_finished = ""
    min_probability = (run.get("params") or {}).get("min_probability", 0.0)
    n_detections = 0
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp, name) for name in OUTPUT_NAMES]
        with (
            _Table(files[0], files[1], SCHEMA, text="jsonl") as manifest,
            _Table(files[2], files[3], detections.SCHEMA, text="csv") as found,
        ):
            for record in iter_records(store, threads=threads, page_size=page_size):
                r = row(record)  # one per source: record keys are an injective map of source keys
                statuses[r["status"]] += 1
                if r["error_code"]:
                    codes[r["error_code"]] += 1
                windows += r["n_windows"] or 0
                audio_s += r["duration_s"] or 0.0
                if run.get("fingerprint") and r["fingerprint"] != run["fingerprint"]:
                    stale += 1
                last_finished = max(last_finished, r["finished_at"] or "")
                manifest.add(r)
                for d in detections.rows(record, min_probability=min_probability):
                    found.add(d)
                    n_detections += 1
        total = sum(statuses.values())
        wall = _wall_seconds(run.get("created_at"), last_finished)
        summary = {
            "recordings": total,
            "by_status": dict(statuses),
            "by_error_code": dict(codes),
            "stale_fingerprint": stale,
            "windows": windows,
            "detections": n_detections,
            "min_probability": min_probability,
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
            "compaction_s": round(time.perf_counter() - t0, 3),
        }
        for path in files:
            store.put_file(path.name, path)
    store.put(SUMMARY, (json.dumps(summary, indent=1) + "\n").encode())
    return summary


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
