"""Run progress counters in Redis: the producer adds what it enqueued, workers what they finished.

Each task is counted once, whatever its deliveries: the task id goes into a set and its counts
are added only if the id was new, atomically in one Lua script.  Keys (run id R):
``echocam:run:R`` (hash: enqueued, skipped, producer_done, tasks_enqueued, tasks_done, ok,
failed, windows, error:<code>, ms:<stage> = summed stage time in ms) and
``echocam:run:R:tasks`` (set of finished task ids).  No torch here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import redis

_COUNT_ONCE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
  return 1
end
return 0
"""
TTL_S = 30 * 24 * 3600


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=30, retry_on_timeout=True)


def key(run_id: str) -> str:
    return f"echocam:run:{run_id}"


def add(r: redis.Redis, run_id: str, **counts: int) -> None:
    """Producer side: add to counters (enqueued, skipped, tasks_enqueued)."""
    with r.pipeline() as p:
        for name, n in counts.items():
            p.hincrby(key(run_id), name, n)
        p.expire(key(run_id), TTL_S)
        p.execute()


def task_done(r: redis.Redis, run_id: str, task_id: str, outcomes: Iterable[Any]) -> bool:
    """Worker side: count a finished task's outcomes once; False if it was already counted."""
    c: Counter[str] = Counter(tasks_done=1)
    for o in outcomes:
        c[o.status] += 1
        c["windows"] += o.windows
        if o.error_code:
            c[f"error:{o.error_code}"] += 1
        for stage, seconds in o.timings_s.items():
            c[f"ms:{stage}"] += round(seconds * 1000)
    args = [task_id] + [x for name, n in c.items() for x in (name, n)]
    added = r.eval(_COUNT_ONCE, 2, key(run_id), key(run_id) + ":tasks", *args)
    r.expire(key(run_id) + ":tasks", TTL_S)
    return bool(added)


def read(r: redis.Redis, run_id: str) -> dict[str, int]:
    raw = r.hgetall(key(run_id))
    return {k.decode(): int(v) for k, v in raw.items()}
