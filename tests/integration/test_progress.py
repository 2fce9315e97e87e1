"""Who ends a run, against a real Redis: exactly one of the producer and the workers learns that
it enqueues the run's compaction, whatever the order and however many finish at once."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from echocam.bucket import progress

OK = [SimpleNamespace(status="ok", windows=1, error_code=None, timings_s={})]


def test_the_last_task_ends_the_run_once_the_producer_is_done(r):
    progress.add(r, "run", enqueued=3, tasks_enqueued=3)
    assert progress.producer_done(r, "run") is False  # no task done yet
    assert progress.task_done(r, "run", "t1", OK) == (True, False)
    assert progress.task_done(r, "run", "t2", OK) == (True, False)
    assert progress.task_done(r, "run", "t3", OK) == (True, True)
    # the same task again (a retry after a failed send): it still owes the compaction ...
    assert progress.task_done(r, "run", "t3", OK) == (False, True)
    # ... but not another task, nor the producer
    assert progress.task_done(r, "run", "t1", OK) == (False, False)
    assert progress.producer_done(r, "run") is False
    progress.compaction_sent(r, "run")
    assert progress.task_done(r, "run", "t3", OK) == (False, False)  # sent: never twice
    assert progress.read(r, "run")["tasks_done"] == 3
    for suffix in (":tasks", ":compaction"):  # nothing stays in Redis for ever
        assert 0 < r.ttl(progress.key("run") + suffix) <= progress.TTL_S


def test_the_producer_ends_the_run_when_its_tasks_finished_first(r):
    progress.add(r, "run", enqueued=2, tasks_enqueued=1)
    assert progress.task_done(r, "run", "t1", OK) == (True, False)  # producer still listing
    assert progress.producer_done(r, "run") is True


def test_a_run_with_no_task_ends_in_the_producer(r):
    progress.add(r, "run", enqueued=0, tasks_enqueued=0, skipped=5)
    assert progress.producer_done(r, "run") is True


def _finish_at_once(r, run: str, tasks: int) -> list[str]:
    """The last ``tasks`` tasks and the producer's end, all at once; who learnt it ends the run."""
    start = threading.Barrier(tasks + 1)
    ends: list[str] = []

    def worker(i: int) -> None:
        start.wait()
        if progress.task_done(r, run, f"t{i}", OK)[1]:
            ends.append(f"t{i}")

    def producer() -> None:
        start.wait()
        if progress.producer_done(r, run):
            ends.append(progress.PRODUCER)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(tasks)]
    threads.append(threading.Thread(target=producer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return ends


def test_one_caller_ends_the_run_when_all_finish_at_once(r):
    """Eight workers finish the last eight tasks while the producer says it is done: one of the
    nine, never none, never two (repeated: the order differs each time)."""
    for attempt in range(20):
        run = f"run-{attempt}"
        progress.add(r, run, enqueued=8, tasks_enqueued=8)
        ends = _finish_at_once(r, run, 8)
        assert len(ends) == 1, (attempt, ends)
        assert r.get(progress.key(run) + ":compaction").decode() == ends[0]


def test_the_manifest_state_is_kept_with_the_run(r):
    progress.compaction_failed(r, "run", "ClientError: AccessDenied")
    assert progress.read(r, "run")["compaction_failed"] == 1
    assert progress.compaction_error(r, "run") == "ClientError: AccessDenied"
    progress.compacted(r, "run", seconds=2.5)  # `echocam manifest`, or a retry, succeeded
    c = progress.read(r, "run")
    assert (c["compacted"], c["compaction_ms"], c.get("compaction_failed")) == (1, 2500, None)
    assert progress.compaction_error(r, "run") is None
