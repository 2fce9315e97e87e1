"""Run progress counters in Redis: the producer adds what it enqueued, workers what they finished.

Each task is counted once, whatever its deliveries: the task id goes into a set and its counts
are added only if the id was new, atomically in one Lua script.  Keys (run id R):
``echocam:run:R`` (hash: enqueued, skipped, producer_done, tasks_enqueued, tasks_done, ok,
failed, windows, error:<code>, ms:<stage> = summed stage time in ms, and the run-end
compaction's compaction_sent, compacted, compaction_failed, compaction_ms),
``echocam:run:R:tasks`` (set of finished task ids), ``echocam:run:R:compaction`` (who enqueues
the compaction) and ``echocam:run:R:compaction_error`` (why it failed).

The run ends when the producer is done and every task it enqueued is counted; whichever of them
comes last (the producer's :func:`producer_done` or a worker's :func:`task_done`) learns, in the
same script, that it is the one to enqueue the manifest's compaction: exactly one caller, and the
same one again if it retries before it said :func:`compaction_sent`.  No torch here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import redis

TTL_S = 30 * 24 * 3600
# KEYS: the run's hash, its set of counted task ids, its compaction key; ARGV[1]: who calls.
# After the caller's counting (``added``): if the run has ended, returns added + 2 when the
# caller enqueues the compaction (it claims it now, or claimed it and did not say it sent it).
_CLAIM = f"""
local h = redis.call('HMGET', KEYS[1], 'producer_done', 'tasks_done', 'tasks_enqueued',
                     'compaction_sent')
if h[1] ~= '1' or tonumber(h[2] or '0') < tonumber(h[3] or '0') then return added end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', {TTL_S})
   or (redis.call('GET', KEYS[3]) == ARGV[1] and h[4] ~= '1') then
  return added + 2
end
return added
"""
# ARGV[2..]: pairs of counter and increment, added once per task id (ARGV[1]).
_TASK_DONE = (
    f"""
local added = 0
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[2], {TTL_S})
  added = 1
end
"""
    + _CLAIM
)
_PRODUCER_DONE = (
    """
local added = redis.call('HSETNX', KEYS[1], 'producer_done', 1)
"""
    + _CLAIM
)
#: Who the producer is, to the claim (no task has this id).
PRODUCER = "producer"


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=30, retry_on_timeout=True)


def key(run_id: str) -> str:
    return f"echocam:run:{run_id}"


def _counted(r: redis.Redis, script: str, run_id: str, *args: Any) -> tuple[bool, bool]:
    """(counted now, the caller enqueues the compaction)."""
    k = key(run_id)
    result = r.eval(script, 3, k, k + ":tasks", k + ":compaction", *args)
    return bool(result & 1), bool(result & 2)


def add(r: redis.Redis, run_id: str, **counts: int) -> None:
    """Producer side: add to counters (enqueued, skipped, tasks_enqueued)."""
    with r.pipeline() as p:
        for name, n in counts.items():
            p.hincrby(key(run_id), name, n)
        p.expire(key(run_id), TTL_S)
        p.execute()


def producer_done(r: redis.Redis, run_id: str) -> bool:
    """Producer side, after its last :func:`add`: the run is enqueued.  True if every task is
    already done (or there was none): then the producer enqueues the compaction."""
    return _counted(r, _PRODUCER_DONE, run_id, PRODUCER)[1]


def task_done(
    r: redis.Redis, run_id: str, task_id: str, outcomes: Iterable[Any]
) -> tuple[bool, bool]:
    """Worker side: count a finished task's outcomes once.  (False if it was already counted,
    True if this task ended the run: it enqueues the compaction.)"""
    c: Counter[str] = Counter(tasks_done=1)
    for o in outcomes:
        c[o.status] += 1
        c["windows"] += o.windows
        if o.error_code:
            c[f"error:{o.error_code}"] += 1
        for stage, seconds in o.timings_s.items():
            c[f"ms:{stage}"] += round(seconds * 1000)
    return _counted(r, _TASK_DONE, run_id, task_id, *(x for kv in c.items() for x in kv))


def compaction_sent(r: redis.Redis, run_id: str) -> None:
    r.hset(key(run_id), "compaction_sent", 1)


def compacted(r: redis.Redis, run_id: str, *, seconds: float) -> None:
    """The run-end compaction wrote the manifest (or found it current) in ``seconds``."""
    with r.pipeline() as p:
        p.hset(key(run_id), mapping={"compacted": 1, "compaction_ms": round(1000 * seconds)})
        p.hdel(key(run_id), "compaction_failed")
        p.delete(key(run_id) + ":compaction_error")
        p.execute()


def compaction_failed(r: redis.Redis, run_id: str, error: str) -> None:
    with r.pipeline() as p:
        p.hset(key(run_id), "compaction_failed", 1)
        p.set(key(run_id) + ":compaction_error", error, ex=TTL_S)
        p.execute()


def compaction_error(r: redis.Redis, run_id: str) -> str | None:
    raw = r.get(key(run_id) + ":compaction_error")
    return raw.decode() if raw is not None else None


def read(r: redis.Redis, run_id: str) -> dict[str, int]:
    raw = r.hgetall(key(run_id))
    return {k.decode(): int(v) for k, v in raw.items()}
