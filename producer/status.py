"""Progress of a run: done / failed / remaining from the Redis counters, as a bar or one line;
and its manifest, which a worker writes once the run has finished."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import redis
from tqdm import tqdm

from echocam.bucket import progress
from echocam.bucket.protocol import Redo


def summarise(
    counters: dict[str, int], run: dict[str, Any], *, manifest_error: str | None = None
) -> dict[str, Any]:
    """Counters → done, failed, remaining, rate (recordings/s since the run began), ETA, and
    the manifest's state: ``pending`` (run not finished), ``writing``, ``written`` or
    ``failed`` (``manifest_error`` says why)."""
    done = counters.get("ok", 0) + counters.get("failed", 0)
    enqueued = counters.get("enqueued", 0)
    elapsed = (datetime.now(UTC) - datetime.fromisoformat(run["created_at"])).total_seconds()
    rate = done / elapsed if elapsed > 0 else 0.0
    remaining = max(enqueued - done, 0)
    finished = bool(counters.get("producer_done")) and remaining == 0
    if counters.get("compacted"):
        manifest = "written"
    elif counters.get("compaction_failed"):
        manifest = "failed"
    else:
        manifest = "writing" if finished else "pending"
    return {
        "run_id": run["run_id"],
        "enqueued": enqueued,
        "ok": counters.get("ok", 0),
        "failed": counters.get("failed", 0),
        "skipped": counters.get("skipped", 0),
        "skipped_are": Redo.from_dict(run.get("redo") or {}).skipped,
        "remaining": remaining,
        "errors": {k[6:]: v for k, v in counters.items() if k.startswith("error:")},
        "windows": counters.get("windows", 0),
        "producer_done": bool(counters.get("producer_done")),
        "finished": finished,
        "rate_per_s": round(rate, 3),
        "eta_s": round(remaining / rate, 1) if rate > 0 else None,
        "manifest": manifest,
        "manifest_error": manifest_error if manifest == "failed" else None,
    }


def line(s: dict[str, Any]) -> str:
    eta = f"{s['eta_s']:.0f} s" if s["eta_s"] is not None else "?"
    return (
        f"run {s['run_id'][:12]}: {s['ok']} ok, {s['failed']} failed, {s['remaining']} remaining "
        f"of {s['enqueued']} enqueued ({s['skipped']} skipped: {s['skipped_are']}); "
        f"{s['rate_per_s']:.2f} rec/s, ETA {eta}"
        + (f"; errors {s['errors']}" if s["errors"] else "")
        + ("" if s["producer_done"] else "; producer still enqueueing")
        + {
            "pending": "",
            "writing": "; manifest being written",
            "written": "; manifest written",
            "failed": f"; manifest failed: {s['manifest_error']}",
        }[s["manifest"]]
    )


def read(r, run: dict[str, Any]) -> dict[str, Any]:
    """The run's state now (:func:`summarise` of its counters)."""
    counters = progress.read(r, run["run_id"])
    failed = counters.get("compaction_failed")
    error = progress.compaction_error(r, run["run_id"]) if failed else None
    return summarise(counters, run, manifest_error=error)


def wait(
    r,
    run: dict[str, Any],
    *,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Block until every enqueued recording has a record and the manifest is written or has
    failed (or ``timeout_s``); returns the state."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    with tqdm(total=0, unit="rec", desc="echocam", disable=not show) as bar:
        while True:
            try:
                s = read(r, run)
            except redis.ConnectionError:  # Redis restarting: keep waiting, within the deadline
                s = None
            if s is not None:
                bar.total = s["enqueued"]
                bar.n = s["ok"] + s["failed"]
                bar.set_postfix(ok=s["ok"], failed=s["failed"], refresh=False)
                bar.refresh()
                if s["manifest"] in ("written", "failed"):
                    return s
            if deadline and time.monotonic() > deadline:
                state = line(s) if s else "Redis unreachable"
                raise TimeoutError(f"run not finished after {timeout_s} s: {state}")
            time.sleep(poll_s)
