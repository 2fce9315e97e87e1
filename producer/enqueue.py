"""Enumerate recordings under an S3 prefix, skip the done ones, and enqueue tasks by name."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from celery import Celery

from echocam import runs
from echocam.chunking import chunked
from echocam.keys import output_key
from echocam.records import is_current
from echocam.settings import Params, Settings
from echocam.storage import ObjectInfo, Store, read_json
from worker import faults, progress

log = logging.getLogger(__name__)
TASK_NAME = "echocam.process"


@dataclass
class Enqueued:
    run: dict[str, Any]
    recordings: int = 0
    tasks: int = 0
    skipped: int = 0


def pending(
    src: Store,
    dst: Store,
    *,
    settings: Settings,
    fingerprint: str,
    force: bool,
    pool: ThreadPoolExecutor,
) -> Iterator[tuple[ObjectInfo, bool]]:
    """(item, needs work) for every audio object, streamed page by page (constant memory)."""
    listing = src.list(suffixes=settings.extensions, page_size=settings.page_size)
    for chunk in chunked(listing, max(settings.page_size, 64)):
        if force:
            yield from ((it, True) for it in chunk)
            continue
        existing = pool.map(lambda it: read_json(dst, output_key(it.key, "record.json")), chunk)
        for it, rec in zip(chunk, existing, strict=True):
            yield it, not is_current(rec, etag=it.etag, fingerprint=fingerprint)


def produce(
    src: Store,
    dst: Store,
    *,
    app: Celery,
    model: dict[str, Any],
    params: Params,
    settings: Settings,
    force: bool = False,
) -> Enqueued:
    """Describe the run (run.json), enqueue tasks of ``settings.task_size`` recordings."""
    run = runs.describe(
        model=model, params=params, input_uri=src.uri, output_uri=dst.uri, mode="distributed"
    )
    runs.save(dst, run)
    message = {**run, "force": force}
    r = progress.client(settings.broker_url)
    out = Enqueued(run)
    batch: list[ObjectInfo] = []
    skipped = 0  # not yet added to the counters

    def send(items: list[ObjectInfo]) -> None:
        nonlocal skipped
        app.send_task(
            TASK_NAME,
            args=[[[it.key, it.size, it.etag] for it in items], message],
            queue=settings.queue,
        )
        # Counted after the send: a producer killed in between under-counts, never over-waits.
        progress.add(r, run["run_id"], enqueued=len(items), tasks_enqueued=1, skipped=skipped)
        out.recordings += len(items)
        out.tasks += 1
        skipped = 0
        faults.after_send()

    with ThreadPoolExecutor(settings.io_threads) as pool:
        for it, needs_work in pending(
            src, dst, settings=settings, fingerprint=run["fingerprint"], force=force, pool=pool
        ):
            if needs_work:
                batch.append(it)
                if len(batch) == settings.task_size:
                    send(batch)
                    batch = []
            else:
                out.skipped += 1
                skipped += 1
        if batch:
            send(batch)
    progress.add(r, run["run_id"], skipped=skipped, producer_done=1)
    return out
