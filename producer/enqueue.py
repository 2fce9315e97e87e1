"""Enumerate recordings under an S3 prefix, skip the done ones, and enqueue tasks by name."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from celery import Celery
from tqdm import tqdm

from echocam import faults, plan, progress, protocol, runs
from echocam.plan import Decision
from echocam.protocol import RESUME, Redo
from echocam.settings import Params, Settings
from echocam.storage import ObjectInfo, Store

log = logging.getLogger(__name__)


@dataclass
class Enqueued:
    run: dict[str, Any]
    recordings: int = 0
    tasks: int = 0
    skipped: int = 0


def _chunk(settings: Settings) -> int:
    """Records read at a time (on ``settings.io_threads`` threads)."""
    return max(settings.page_size, 64)


def produce(
    src: Store,
    dst: Store,
    *,
    app: Celery,
    model: dict[str, Any],
    params: Params,
    settings: Settings,
    redo: Redo = RESUME,
    limit: int | None = None,
    show: bool = False,
    class_names: list[str] | None = None,
) -> Enqueued:
    """Describe the run (run.json), enqueue tasks of ``settings.task_size`` recordings.

    With ``limit``, at most that many recordings that need work; with ``show``, a progress
    bar on stderr (listed, enqueued, skipped) while listing and enqueuing.
    """
    run = runs.describe(
        model=model,
        params=params,
        input_uri=src.uri,
        output_uri=dst.uri,
        mode="distributed",
        class_names=class_names,
    )
    runs.save(dst, run)
    message = protocol.run_message(run, redo)
    r = progress.client(settings.broker_url)
    out = Enqueued(run)
    batch: list[ObjectInfo] = []
    skipped = 0  # not yet added to the counters

    def send(items: list[ObjectInfo]) -> None:
        nonlocal skipped
        app.send_task(
            protocol.TASK_NAME, args=protocol.task_args(items, message), queue=settings.queue
        )
        # Counted after the send: a producer killed in between under-counts, never over-waits.
        progress.add(r, run["run_id"], enqueued=len(items), tasks_enqueued=1, skipped=skipped)
        out.recordings += len(items)
        out.tasks += 1
        skipped = 0
        faults.after_send()

    with (
        ThreadPoolExecutor(settings.io_threads) as pool,
        tqdm(
            desc="echocam produce: listed",
            unit=" rec",
            file=sys.stderr,
            disable=not show,
            mininterval=0.5,
        ) as bar,
    ):
        decisions = plan.for_run(
            src,
            dst,
            run,
            settings=settings,
            redo=redo,
            pool=pool,
            chunk=_chunk(settings),
            limit=limit,
        )
        for d in decisions:
            if d.todo:
                batch.append(d.item)
                if len(batch) == settings.task_size:
                    send(batch)
                    batch = []
            else:
                out.skipped += 1
                skipped += 1
            bar.set_postfix(enqueued=out.recordings, skipped=out.skipped, refresh=False)
            bar.update()
        if batch:
            send(batch)
        bar.set_postfix(enqueued=out.recordings, skipped=out.skipped)
    progress.add(r, run["run_id"], skipped=skipped, producer_done=1)
    return out


def dry_run(
    src: Store,
    dst: Store,
    *,
    model: dict[str, Any],
    params: Params,
    settings: Settings,
    redo: Redo = RESUME,
    limit: int | None = None,
) -> Iterator[Decision]:
    """What :func:`produce` would enqueue and skip (and why), writing nothing anywhere."""
    return plan.dry_run(
        src,
        dst,
        model=model,
        params=params,
        settings=settings,
        redo=redo,
        limit=limit,
        chunk=_chunk(settings),
    )
