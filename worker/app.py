"""The Celery app: configuration declared in one place.  No torch here (the producer imports it).

Start a worker with ``echocam worker`` (or ``celery -A worker.app worker``); settings come from
``ECHOCAM_*`` variables (see ``echocam.settings.Settings``).
"""

from __future__ import annotations

from celery import Celery

from echocam.settings import Settings

settings = Settings.from_env()

app = Celery("echocam", broker=settings.broker_url, backend=None)
app.conf.update(
    # JSON only on the wire: a pickled message is rejected, never deserialised.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    event_serializer="json",
    # At least once, harmless twice: ack after the work; a lost worker's task is redelivered.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # A pool process reports "up" only after worker_process_init (device set-up and a warm-up
    # explain, ~5 s on a busy CPU); billiard's default of 4 s kills it and forks another, in a loop.
    worker_proc_alive_timeout=60,
    # kombu looks for unacked messages past the visibility timeout every 10 s but, by default,
    # scans only every 10th time: a lost task came back up to 100 s late.  Scan every time.
    broker_transport_options={
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_throttle": 1,
    },
    worker_cancel_long_running_tasks_on_connection_loss=True,
    broker_connection_retry_on_startup=True,
    task_soft_time_limit=settings.task_soft_time_limit,
    task_time_limit=settings.task_time_limit,
    # Results live in the bucket (records); progress in Redis counters; a search's parts in
    # its own Redis list (``echocam.search.reply_part``): no result backend (with one, a worker
    # stalled after a Redis restart in the fault tests).
    task_ignore_result=True,
    # Events for Flower.
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_default_queue=settings.queue,
    task_routes={"echocam.*": {"queue": settings.queue}},
    imports=("worker.tasks", "worker.control"),
    worker_hijack_root_logger=False,
)
