"""Prometheus exporter: run progress and queue depth, read from Redis on every scrape.

Flower exports worker and task events, but not what a run has done nor how deep the queue is.
This exporter reads the per-run counters the producer and the workers keep in Redis
(``echocam.bucket.progress``: hash ``echocam:run:<run_id>``) and the broker's queue lists, and
serves:

- ``echocam_recordings_enqueued_total{run_id}``, ``echocam_recordings_skipped_total{run_id}``
- ``echocam_recordings_total{run_id,status}``: finished recordings, status ``ok`` or ``failed``
- ``echocam_recording_errors_total{run_id,error_code}``: failed recordings by error code
- ``echocam_windows_total{run_id}``: windows explained (windows/s is
  ``sum(rate(echocam_windows_total[1m]))``)
- ``echocam_stage_seconds_total{run_id,stage}``: time spent per stage (decode, compute, encode)
- ``echocam_tasks_enqueued_total{run_id}``, ``echocam_tasks_done_total{run_id}``
- ``echocam_recordings_remaining{run_id}``, ``echocam_run_producer_done{run_id}``,
  ``echocam_run_manifest_written{run_id}``, ``echocam_run_manifest_failed{run_id}`` (gauges)
- ``echocam_queue_length{queue}``: tasks waiting in the broker (all priority lists summed)
- ``echocam_queue_unacked``: tasks delivered to workers and not yet acknowledged (running)
- ``echocam_up``: 1 if Redis answered this scrape

A custom collector reads Redis when Prometheus scrapes (no polling loop, nothing cached), so
several exporters or restarts never disagree.  No torch here: it runs in the slim image.

    python -m producer.exporter --bind 0.0.0.0 --port 9808    # broker: ECHOCAM_BROKER_URL
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from echocam.bucket import progress

DEFAULT_PORT = 9808
RUN_PREFIX = progress.key("")  # "echocam:run:"
# kombu's Redis transport keeps a queue as a list named after it, and one more list per
# priority step (name + "\x06\x16" + step) once priorities are used: sum them all.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"  # kombu's hash of delivered, unacknowledged messages (acks_late)


def queue_keys(queue: str) -> list[str]:
    """The broker lists that hold ``queue``'s messages."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


class EchocamCollector(Collector):
    """Collects run counters and queue depth from Redis at each scrape."""

    def __init__(self, r: Any, queues: Sequence[str], *, scan_count: int = 500) -> None:
        self.r = r
        self.queues = list(queues)
        self.scan_count = scan_count

    def describe(self) -> Iterator[Metric]:
        # Names only: registering the collector must not touch Redis.
        yield from self._families().values()
        yield GaugeMetricFamily("echocam_up", "")
        yield GaugeMetricFamily("echocam_exporter_scrape_seconds", "")

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        try:
            runs = self._read_runs()
            depths = self._read_queues()
        except Exception as e:  # Redis down or unreachable: say so, and serve no stale numbers
            print(f"echocam metrics: redis: {type(e).__name__}: {e}", file=sys.stderr)
            yield GaugeMetricFamily("echocam_up", "1 if Redis answered this scrape", value=0)
            return
        fams = self._families()
        for run_id, c in sorted(runs.items()):
            fams["enqueued"].add_metric([run_id], c.get("enqueued", 0))
            fams["skipped"].add_metric([run_id], c.get("skipped", 0))
            for status in ("ok", "failed"):
                fams["recordings"].add_metric([run_id, status], c.get(status, 0))
            fams["windows"].add_metric([run_id], c.get("windows", 0))
            fams["tasks_enqueued"].add_metric([run_id], c.get("tasks_enqueued", 0))
            fams["tasks_done"].add_metric([run_id], c.get("tasks_done", 0))
            for name, value in sorted(c.items()):
                if name.startswith("error:"):
                    fams["errors"].add_metric([run_id, name[len("error:") :]], value)
                elif name.startswith("ms:"):
                    fams["stages"].add_metric([run_id, name[len("ms:") :]], value / 1000)
            done = c.get("ok", 0) + c.get("failed", 0)
            fams["remaining"].add_metric([run_id], max(c.get("enqueued", 0) - done, 0))
            fams["producer_done"].add_metric([run_id], 1 if c.get("producer_done") else 0)
            fams["manifest_written"].add_metric([run_id], 1 if c.get("compacted") else 0)
            fams["manifest_failed"].add_metric([run_id], 1 if c.get("compaction_failed") else 0)
        for queue, n in depths["queues"].items():
            fams["queue_length"].add_metric([queue], n)
        fams["unacked"].add_metric([], depths["unacked"])
        yield from fams.values()
        yield GaugeMetricFamily("echocam_up", "1 if Redis answered this scrape", value=1)
        yield GaugeMetricFamily(
            "echocam_exporter_scrape_seconds",
            "time spent reading Redis for this scrape",
            value=time.perf_counter() - t0,
        )

    @staticmethod
    def _families() -> dict[str, Metric]:
        run = ["run_id"]
        return {
            "enqueued": CounterMetricFamily(
                "echocam_recordings_enqueued", "recordings the producer enqueued", labels=run
            ),
            "skipped": CounterMetricFamily(
                "echocam_recordings_skipped",
                "recordings not enqueued: done (same ETag and fingerprint), or not a failure "
                "--retry-failed selects",
                labels=run,
            ),
            "recordings": CounterMetricFamily(
                "echocam_recordings",
                "recordings finished, by status (ok, failed)",
                labels=["run_id", "status"],
            ),
            "errors": CounterMetricFamily(
                "echocam_recording_errors",
                "failed recordings by error code",
                labels=["run_id", "error_code"],
            ),
            "windows": CounterMetricFamily(
                "echocam_windows", "analysis windows explained", labels=run
            ),
            "stages": CounterMetricFamily(
                "echocam_stage_seconds",
                "seconds spent per stage (decode, compute, encode), summed over recordings",
                labels=["run_id", "stage"],
            ),
            "tasks_enqueued": CounterMetricFamily(
                "echocam_tasks_enqueued", "tasks the producer enqueued", labels=run
            ),
            "tasks_done": CounterMetricFamily(
                "echocam_tasks_done", "tasks finished (each counted once)", labels=run
            ),
            "remaining": GaugeMetricFamily(
                "echocam_recordings_remaining",
                "recordings enqueued and not finished yet",
                labels=run,
            ),
            "producer_done": GaugeMetricFamily(
                "echocam_run_producer_done",
                "1 once the producer has enqueued the whole run",
                labels=run,
            ),
            "manifest_written": GaugeMetricFamily(
                "echocam_run_manifest_written",
                "1 once a worker has written the run's manifest (after its last task)",
                labels=run,
            ),
            "manifest_failed": GaugeMetricFamily(
                "echocam_run_manifest_failed",
                "1 if the run's manifest could not be written (`echocam manifest` writes it)",
                labels=run,
            ),
            "queue_length": GaugeMetricFamily(
                "echocam_queue_length", "tasks waiting in the broker queue", labels=["queue"]
            ),
            "unacked": GaugeMetricFamily(
                "echocam_queue_unacked",
                "tasks delivered to workers and not yet acknowledged (running or prefetched)",
            ),
        }

    def _read_runs(self) -> dict[str, dict[str, int]]:
        # SCAN (never KEYS) for the run hashes; the ":tasks" sets are skipped by their type.
        keys = [
            k.decode() if isinstance(k, bytes) else k
            for k in self.r.scan_iter(match=RUN_PREFIX + "*", count=self.scan_count, _type="hash")
        ]
        keys = [k for k in keys if not k.endswith(":tasks")]
        with self.r.pipeline(transaction=False) as p:
            for k in keys:
                p.hgetall(k)
            hashes = p.execute()
        runs: dict[str, dict[str, int]] = {}
        for k, h in zip(keys, hashes, strict=True):
            if h:  # expired between SCAN and HGETALL
                runs[k[len(RUN_PREFIX) :]] = {_s(f): int(v) for f, v in h.items()}
        return runs

    def _read_queues(self) -> dict[str, Any]:
        with self.r.pipeline(transaction=False) as p:
            for q in self.queues:
                for k in queue_keys(q):
                    p.llen(k)
            p.hlen(UNACKED_KEY)
            *lengths, unacked = p.execute()
        steps = len(PRIORITY_STEPS)
        queues = {q: sum(lengths[i * steps : (i + 1) * steps]) for i, q in enumerate(self.queues)}
        return {"queues": queues, "unacked": unacked}


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def client(url: str) -> redis.Redis:
    """A Redis client that gives up within a scrape's time (Prometheus' default timeout is 10 s)."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def registry_for(r: Any, queues: Sequence[str]) -> CollectorRegistry:
    """A registry holding only the echo-cam collector (no process metrics of the exporter)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(EchocamCollector(r, queues))
    return registry


def serve(registry: CollectorRegistry, *, bind: str, port: int):
    """Start the HTTP server (``/metrics``) in a thread; returns the server (``server_port``)."""
    server, _thread = start_http_server(port, addr=bind, registry=registry)
    return server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="echocam metrics",
        description="Serve Prometheus metrics for echo-cam runs and the task queue, read from "
        "Redis at each scrape.",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"[default {DEFAULT_PORT}]")
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 inside a container [default 127.0.0.1]",
    )
    p.add_argument(
        "--broker-url",
        default=None,
        help="Redis URL of the broker and the counters [ECHOCAM_BROKER_URL]",
    )
    p.add_argument(
        "--queue",
        action="append",
        default=None,
        help="queue to measure, repeatable [ECHOCAM_QUEUE; default echocam]",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from echocam.settings import Settings

    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    url = args.broker_url or settings.broker_url
    queues = args.queue or [settings.queue]
    registry = registry_for(client(url), queues)
    server = serve(registry, bind=args.bind, port=args.port)
    host, port = server.server_address[:2]
    print(f"echocam metrics: http://{host}:{port}/metrics (queues {', '.join(queues)})", flush=True)
    # As PID 1 in a container SIGTERM has no default action: make it stop us like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
