"""Process a batch of source objects from one store into another: the unit of work.

``echocam run`` (local mode) and the Celery task both call :func:`run_batch`, so both write the
same outputs and records.  Outputs are written first and the record last: a record's presence
means the recording's outputs are complete.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from echocam import records
from echocam.errors import DownloadFailed, EchoCamError
from echocam.keys import output_key
from echocam.manifest import now_iso
from echocam.pipeline import Explainer, Source
from echocam.storage import ObjectInfo, Store, read_json

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    key: str
    status: str  # "ok" | "failed" | "skipped"
    error_code: str | None = None
    windows: int = 0


def is_done(record: dict | None, item: ObjectInfo, *, fingerprint: str, run_id: str, force: bool):
    """Whether ``item`` needs no work: its record is current (or, with ``force``, from this run)."""
    if not records.is_current(record, etag=item.etag, fingerprint=fingerprint):
        return False
    return not force or record.get("run_id") == run_id


def fetch(src: Store, item: ObjectInfo, *, max_bytes: int) -> Source:
    """Read one source; failures become the source's error (download_failed after retries)."""
    try:
        data, info = src.get(item.key, max_bytes=max_bytes)
        return Source(item.key, data, info.size, info.etag or item.etag)
    except EchoCamError as e:
        return Source(item.key, size=item.size, etag=item.etag, error=e)
    except Exception as e:  # S3 errors left after botocore's retries, vanished files
        err = DownloadFailed(f"cannot read source: {type(e).__name__}: {e}")
        return Source(item.key, size=item.size, etag=item.etag, error=err)


def write_record(dst: Store, record: dict, *, replace: bool) -> bool:
    """Write ``record`` last; without ``replace`` only if absent (False: another delivery won)."""
    return dst.put(record["record_key"], records.dumps(record), if_absent=not replace)


def run_batch(
    items: Sequence[ObjectInfo],
    *,
    src: Store,
    dst: Store,
    explainer: Explainer,
    run_id: str,
    force: bool = False,
    pool: ThreadPoolExecutor,
) -> list[Outcome]:
    """Explain ``items`` from ``src`` into ``dst``; skips done ones; never raises for bad input.

    Errors writing to ``dst`` do raise (the caller retries the batch; done recordings are then
    skipped).  ``pool`` runs the reads and writes concurrently.
    """
    fp = explainer.fingerprint
    existing = list(pool.map(lambda it: read_json(dst, output_key(it.key, "record.json")), items))
    outcomes = {it.key: Outcome(it.key, "skipped") for it in items}
    todo = [
        (it, rec)
        for it, rec in zip(items, existing, strict=True)
        if not is_done(rec, it, fingerprint=fp, run_id=run_id, force=force)
    ]
    if not todo:
        return list(outcomes.values())
    max_bytes = explainer.params.max_bytes
    sources = list(pool.map(lambda t: fetch(src, t[0], max_bytes=max_bytes), todo))
    results = explainer.explain(sources)
    had_record = {it.key: rec is not None for it, rec in todo}

    def write(result) -> Outcome:
        for key, data in result.files.items():
            dst.put(key, data)
        rec = {**result.record, "run_id": run_id, "finished_at": now_iso()}
        key = rec["source_key"]
        if not write_record(dst, rec, replace=had_record[key]):
            return Outcome(key, "skipped")
        return Outcome(key, rec["status"], rec["error_code"], rec.get("n_windows") or 0)

    for out in pool.map(write, results):
        outcomes[out.key] = out
    return list(outcomes.values())
