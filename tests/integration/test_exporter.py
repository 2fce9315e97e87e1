"""The Prometheus exporter against a real Redis: counters written by echocam.bucket.progress, tasks
queued by a real Celery producer, scraped over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from devtools.services import free_port, wait_for
from echocam.bucket import progress
from producer import exporter

ROOT = Path(__file__).resolve().parents[2]


def outcome(status, windows=0, error_code=None, **timings_s):
    return SimpleNamespace(
        status=status, windows=windows, error_code=error_code, timings_s=timings_s
    )


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` from ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@pytest.fixture
def served(r):
    server = exporter.serve(exporter.registry_for(r, ["echocam"]), bind="127.0.0.1", port=0)
    yield server.server_port
    server.shutdown()
    server.server_close()


def test_run_counters_and_queue_depth(r, redis_srv, served):
    run = "3f2a9c"
    progress.add(r, run, enqueued=5, tasks_enqueued=2, skipped=1)
    done = [
        outcome("ok", 3, decode=0.5, compute=1.25, encode=0.25),
        outcome("ok", 2, decode=0.25, compute=0.75, encode=0.125),
        outcome("failed", 0, "undecodable"),
    ]
    assert progress.task_done(r, run, "task-1", done) == (True, False)
    # a redelivery is not counted twice
    assert progress.task_done(r, run, "task-1", done) == (False, False)
    assert not progress.producer_done(r, run)  # one task of two is still running
    progress.add(r, "older-run", enqueued=1)
    progress.task_done(r, "older-run", "task-9", [outcome("failed", 0, "too_short")])

    # Two tasks waiting, one of them on a priority list (kombu: "<queue>\x06\x169").
    app = Celery("probe", broker=redis_srv.url)
    app.send_task("echocam.process", args=[[], {}], queue="echocam")
    app.send_task("echocam.process", args=[[], {}], queue="echocam", priority=9)
    app.send_task("echocam.process", args=[[], {}], queue="other")
    app.close()
    assert r.llen("echocam") == 1  # where kombu put them: what the exporter must read
    r.hset("unacked", "tag-1", "{}")  # a delivered, unacknowledged message

    m = scrape(served)
    lab = (("run_id", run),)
    assert m[("echocam_up", ())] == 1
    assert m[("echocam_recordings_enqueued_total", lab)] == 5
    assert m[("echocam_recordings_skipped_total", lab)] == 1
    assert m[("echocam_recordings_total", (("run_id", run), ("status", "ok")))] == 2
    assert m[("echocam_recordings_total", (("run_id", run), ("status", "failed")))] == 1
    errors = (("error_code", "undecodable"), ("run_id", run))
    assert m[("echocam_recording_errors_total", errors)] == 1
    assert m[("echocam_windows_total", lab)] == 5
    for stage, seconds in {"decode": 0.75, "compute": 2.0, "encode": 0.375}.items():
        key = ("echocam_stage_seconds_total", (("run_id", run), ("stage", stage)))
        assert m[key] == pytest.approx(seconds, abs=1e-3)
    assert m[("echocam_tasks_enqueued_total", lab)] == 2
    assert m[("echocam_tasks_done_total", lab)] == 1
    assert m[("echocam_recordings_remaining", lab)] == 2
    assert m[("echocam_run_producer_done", lab)] == 1
    assert m[("echocam_run_manifest_written", lab)] == 0
    # The other run, and no run made of the ":tasks" set.
    assert m[("echocam_run_producer_done", (("run_id", "older-run"),))] == 0
    older = (("error_code", "too_short"), ("run_id", "older-run"))
    assert m[("echocam_recording_errors_total", older)] == 1
    runs = {dict(labels)["run_id"] for name, labels in m if name == "echocam_windows_total"}
    assert runs == {run, "older-run"}
    assert m[("echocam_queue_length", (("queue", "echocam"),))] == 2
    assert m[("echocam_queue_unacked", ())] == 1

    # Read at each scrape: the next one sees new work without any polling loop.
    assert progress.task_done(r, run, "task-2", [outcome("ok", 4)]) == (True, True)
    assert scrape(served)[("echocam_windows_total", lab)] == 9
    progress.compacted(r, run, seconds=1.5)
    assert scrape(served)[("echocam_run_manifest_written", lab)] == 1


def test_empty_redis_has_no_runs(r, served):
    m = scrape(served)
    assert m[("echocam_up", ())] == 1
    assert m[("echocam_queue_length", (("queue", "echocam"),))] == 0
    assert not [name for name, _ in m if name == "echocam_windows_total"]


def test_redis_down_is_reported_not_raised():
    dead = exporter.client(f"redis://127.0.0.1:{free_port()}/0")
    server = exporter.serve(exporter.registry_for(dead, ["echocam"]), bind="127.0.0.1", port=0)
    try:
        m = scrape(server.server_port)  # HTTP 200 with echocam_up 0, not a 500
    finally:
        server.shutdown()
        server.server_close()
    assert m == {("echocam_up", ()): 0}


def test_main_serves_until_sigterm(redis_srv, r):
    progress.add(r, "cli-run", enqueued=7)
    port = free_port()
    env = {**os.environ, "ECHOCAM_BROKER_URL": redis_srv.url, "ECHOCAM_QUEUE": "echocam"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer.exporter", "--port", str(port), "--bind", "127.0.0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def answers() -> bool:
            try:
                return scrape(port)[("echocam_recordings_enqueued_total", (("run_id", "cli-run"),))]
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read()
                return False

        wait_for(answers, timeout=30, what="the exporter to serve /metrics")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 10
        assert f"127.0.0.1:{port}/metrics" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
