"""Enumerate recordings under an S3 prefix, skip the done ones, and enqueue tasks by name.

Tasks go out pipelined: Celery's ``send_task`` on one producer inside kombu's publish batch
(``Producer.batch``: the Redis transport buffers each message's LPUSH in a pipeline), flushed
every :data:`BATCH_TASKS` tasks or :data:`BATCH_WAIT_S` seconds, whichever comes first; the
progress counters of a flushed batch follow in one more round trip.  So a batch of tasks costs
two round trips to Redis, not two per task, and the messages are Celery's own.

When the run ends (its last task done, after the producer said it enqueued everything), one
worker writes its manifest (``echocam.compact``); if it ends in the producer (every task was
done before, or there was none), the producer sends that task.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery
from tqdm import tqdm

from echocam.bucket import faults, plan, progress, protocol, runs
from echocam.bucket.plan import Decision
from echocam.bucket.protocol import RESUME, Redo
from echocam.bucket.storage import ObjectInfo, Store
from echocam.settings import Params, Settings

log = logging.getLogger(__name__)

#: Tasks per pipelined flush, and the longest a sent task waits in the buffer (seconds).
BATCH_TASKS, BATCH_WAIT_S = 64, 0.25


@dataclass
class Enqueued:
    run: dict[str, Any]
    recordings: int = 0
    tasks: int = 0
    skipped: int = 0


@contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """Keep the garbage collector off the objects that exist before the listing starts.

    The listing and the decisions allocate a few objects per key, so full collections come
    every few thousand keys, each over the ~140k objects of the imported modules and
    botocore's service models: tens of milliseconds each, a few with those objects frozen
    (CPython's ``gc.freeze``; undone after, and left alone if the caller froze).
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _chunk(settings: Settings) -> int:
    """Records read at a time (on ``settings.io_threads`` threads)."""
    return max(settings.page_size, 64)


@_older_objects_frozen()
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
        redo=redo,
    )
    runs.save(dst, run)
    message = protocol.run_message(run, redo)
    r = progress.client(settings.broker_url)
    out = Enqueued(run)
    batch: list[ObjectInfo] = []
    skipped = 0  # not yet added to the counters
    unflushed = [0, 0]  # recordings, tasks sent into the pipeline and not yet flushed
    oldest = 0.0  # when the first unflushed task was sent (monotonic)
    shown = 0.0  # when the bar's counters were last updated (monotonic)

    def flush() -> None:
        nonlocal skipped
        if unflushed[1]:
            pipeline.flush()
        # Counted after the flush: a producer killed in between under-counts, never over-waits.
        recordings, tasks = unflushed
        progress.add(r, run["run_id"], enqueued=recordings, tasks_enqueued=tasks, skipped=skipped)
        out.recordings += recordings
        out.tasks += tasks
        unflushed[:] = [0, 0]
        skipped = 0

    def send(items: list[ObjectInfo]) -> None:
        nonlocal oldest
        app.send_task(
            protocol.TASK_NAME,
            args=protocol.task_args(items, message),
            queue=settings.queue,
            producer=producer,
            # Celery's default is a saferepr of the arguments (for logs and Flower), the
            # producer's largest cost per task after JSON; a summary says as much.
            argsrepr=f"[{len(items)} recordings from {items[0].key!r}, run {run['run_id']}]",
            kwargsrepr="{}",
            # The queue is declared with the first task; kombu would skip it for the others
            # anyway, but only after ~20 % of a send's time spent finding that out.
            declare=None if not (out.tasks or unflushed[1]) else [],
        )
        if not unflushed[1]:
            oldest = time.monotonic()
        unflushed[0] += len(items)
        unflushed[1] += 1
        faults.after_send()

    def due() -> bool:
        return unflushed[1] >= BATCH_TASKS or (
            unflushed[1] > 0 and time.monotonic() - oldest >= BATCH_WAIT_S
        )

    with (
        app.producer_or_acquire() as producer,
        producer.batch(max_size=1_000_000) as pipeline,  # flushed by us, never on its own
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
            if due():
                flush()
            # formatting the postfix costs more than the decision: at most 10 times a second
            if show and (now := time.monotonic()) - shown >= 0.1:
                bar.set_postfix(enqueued=out.recordings, skipped=out.skipped, refresh=False)
                shown = now
            bar.update()
        if batch:
            send(batch)
        flush()
        bar.set_postfix(enqueued=out.recordings, skipped=out.skipped)
    if progress.producer_done(r, run["run_id"]):  # every task done already, or none enqueued
        protocol.send_compaction(app, r, run, wrote=out.tasks > 0, queue=settings.queue)
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
