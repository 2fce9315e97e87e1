"""Faults survived with real processes: killed workers, Redis restarts, S3 errors, poison tasks,
time limits and a killed producer.  Each run must complete with every input in the manifest once.

The manifest has one row per record by construction, so exactly-once is checked where it can
break: workers reach S3 through a fault proxy that logs every request (each record.json must be
created by one conditional PUT; a redelivered task's reads and writes are counted), and Redis
holds how often each task ran and what progress counted.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import soundfile as sf

from devtools.faultproxy import FaultProxy, Rule
from devtools.services import RedisServer, SeaweedS3, wait_for
from devtools.stack import ROOT, Worker, echocam
from tests.helpers import marks, own_queue, recordings, start_worker, wav_bytes

pytestmark = pytest.mark.slow
BUCKET = "faults"


def clips(n: int, seconds: float = 3.0) -> list[bytes]:
    """``n`` distinct real-audio clips cut from the shared 22 kHz soundscapes."""
    files = [p for p in recordings() if p.name.startswith("S4A")]  # samples/ has two
    out = []
    for i in range(n):
        y, sr = sf.read(files[i % len(files)], dtype="float32")
        start = (i // len(files)) * int(0.5 * sr)
        out.append(wav_bytes(y[start : start + int(seconds * sr)], sr))
    return out


@pytest.fixture(scope="module")
@marks("redis", "s3")
def services(tmp_path_factory, species_checkpoint):
    """Redis (persistent: it is crashed and restarted) and SeaweedFS for the module."""
    d = tmp_path_factory.mktemp("faults")
    with RedisServer(appendonly=True, password="fault-pw") as redis_srv, SeaweedS3() as s3:
        s3.create_bucket(BUCKET)
        env = {
            **os.environ,
            **s3.env(),
            "ECHOCAM_BROKER_URL": redis_srv.url,
            "ECHOCAM_WEIGHTS": str(species_checkpoint),
            "ECHOCAM_THREADS": "1",
            # short limits so a lost message comes back within the test
            "ECHOCAM_TASK_SOFT_TIME_LIMIT": "20",
            "ECHOCAM_TASK_TIME_LIMIT": "30",
            "ECHOCAM_VISIBILITY_TIMEOUT": "40",
        }
        yield {"env": env, "s3": s3, "client": s3.client(), "redis": redis_srv, "dir": d}


def own(services: dict, request) -> dict:
    """The services with the queue of the test or fixture ``request`` serves: its producer and
    the workers it starts (stopped at its end) serve it alone."""
    env = {**services["env"], "ECHOCAM_QUEUE": own_queue(request)}
    return {**services, "env": env, "request": request}


@pytest.fixture
@marks("worker")
def svc(services, request):
    return own(services, request)


def upload(svc, prefix: str, items: dict[str, bytes]) -> None:
    for name, data in items.items():
        svc["client"].put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=data)


def worker(svc, name: str, **env: str) -> Worker:
    """A worker of this test, on its queue, ready."""
    return start_worker(svc["request"], {**svc["env"], **env}, name=name, log_dir=svc["dir"])


def produce(svc, prefix: str, *args: str, wait: bool = False) -> subprocess.CompletedProcess:
    proc = echocam(
        svc["env"],
        "produce",
        f"s3://{BUCKET}/{prefix}",
        "--out",
        f"s3://{BUCKET}/out-{prefix}",
        "--task-size",
        "2",
        *args,
        *(["--wait", "--timeout", "400"] if wait else []),
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def finish(svc, prefix: str) -> list[dict]:
    """Wait for the run under out-<prefix> and the manifest a worker writes when it ends; the
    manifest's rows."""
    st = echocam(svc["env"], "status", f"s3://{BUCKET}/out-{prefix}", "--wait", "--timeout", "400")
    assert st.returncode == 0, st.stdout + st.stderr
    assert "; manifest written" in st.stdout, st.stdout
    return manifest(svc, prefix)


def manifest(svc, prefix: str) -> list[dict]:
    body = svc["client"].get_object(Bucket=BUCKET, Key=f"out-{prefix}/manifest.jsonl")["Body"]
    return [json.loads(line) for line in body.read().decode().splitlines()]


def assert_exactly_once(rows: list[dict], names, statuses=None) -> None:
    keys = [r["source_key"] for r in rows]
    assert sorted(keys) == sorted(names) and len(set(keys)) == len(keys)
    want = statuses or {}
    for r in rows:
        expected = want.get(r["source_key"], "ok")
        got = r["status"] if expected == "ok" else r["error_code"]
        assert got == expected, r


def wait_log(w: Worker, text: str, timeout: float = 120.0) -> None:
    wait_for(lambda: text.encode() in w.log_path.read_bytes(), timeout, f"{text!r} in worker log")


def pool_pids(w: Worker) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(w.proc.pid)], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def run_id(svc, prefix: str) -> str:
    body = svc["client"].get_object(Bucket=BUCKET, Key=f"out-{prefix}/run.json")["Body"]
    return json.loads(body.read())["run_id"]


def counters(svc, rid: str) -> dict[str, int]:
    """The run's progress hash (ok, failed, enqueued, tasks_done, ...) and its task-set size."""
    r = svc["redis"].client()
    out = {k.decode(): int(v) for k, v in r.hgetall(f"echocam:run:{rid}").items()}
    return {**out, "task_ids": r.scard(f"echocam:run:{rid}:tasks")}


def deliveries(svc, rid: str) -> list[int]:
    """How often each of the run's tasks ran (deliveries and Celery retries), sorted."""
    r = svc["redis"].client()
    runs = []
    for tid in r.smembers(f"echocam:run:{rid}:tasks"):
        keys = r.keys(f"echocam:deliveries:{tid.decode()}:*")
        runs.append(sum(int(r.get(k)) for k in keys))
    return sorted(runs)


def assert_counted_once(svc, prefix: str, names, *, tasks: int, failed: int = 0) -> None:
    """Redis progress: every recording and every task counted once, whatever the deliveries."""
    c = counters(svc, run_id(svc, prefix))
    assert c["enqueued"] == len(names) and c["tasks_enqueued"] == tasks, c
    assert (c["ok"], c.get("failed", 0)) == (len(names) - failed, failed), c
    assert c["tasks_done"] == c["task_ids"] == tasks, c


def puts(proxy: FaultProxy, prefix: str, key: str, name: str) -> list:
    """The PUTs of ``key``'s output ``name`` under out-<prefix>, in the order the proxy saw them."""
    return proxy.requests("PUT", f"/{BUCKET}/out-{prefix}/{key}/{name}")


def run_killed_while_held(
    svc, prefix: str, held: Rule, what: str
) -> tuple[list[dict], FaultProxy, Worker]:
    """Run ``prefix`` with one worker behind the proxy; once ``held`` stalls a request, SIGKILL
    the worker's pool process (the one that sent it), then let the request go (dropped).  The
    manifest's rows once the run is done (the worker lived on to the end), the proxy, and the
    worker, stopped."""
    with FaultProxy(svc["s3"].port, fail_rate=0, rules=[held]) as proxy:
        w = worker(svc, prefix, ECHOCAM_S3_ENDPOINT_URL=proxy.endpoint_url)
        try:
            produce(svc, prefix)
            wait_for(proxy.stalled.is_set, 180, what)
            (child,) = pool_pids(w)
            os.kill(child, signal.SIGKILL)
            proxy.release()
            rows = finish(svc, prefix)
            assert w.proc.poll() is None  # the worker lives on
        finally:
            w.stop()
    return rows, proxy, w


def assert_records_created_once(proxy: FaultProxy, prefix: str, names) -> None:
    """Each recording's record.json was created by exactly one successful conditional PUT
    (If-None-Match: *): no delivery overwrote or duplicated another's record."""
    base = f"/{BUCKET}/out-{prefix}/"
    created: Counter[str] = Counter()
    for q in proxy.requests("PUT", base):
        if q.path.endswith("/record.json") and q.status == 200:
            assert q.if_none_match == "*", q  # a create, never an overwrite
            created[q.path[len(base) : -len("/record.json")]] += 1
    assert created == Counter(list(names))


def source_gets(proxy: FaultProxy, prefix: str, key: str) -> int:
    return len(proxy.requests("GET", f"/{BUCKET}/{prefix}/{key}"))


def test_sigkill_of_a_pool_process_mid_task_redelivers_it(svc):
    """The pool process dies between two records of a task: the redelivered task skips the
    recording whose record exists and rewrites the other's outputs with the same bytes."""
    names = {f"clip-{i:02d}.wav": b for i, b in enumerate(clips(6))}
    upload(svc, "sigkill", names)
    # tasks: [00, 01], [02, 03], [04, 05]; halves of one: 02 is written, then 03.
    held = Rule("PUT", f"/{BUCKET}/out-sigkill/clip-03.wav/record.json", "stall", times=1)
    rows, proxy, w = run_killed_while_held(svc, "sigkill", held, "clip-03's record PUT held")
    assert_exactly_once(rows, names)
    log = w.log_path.read_text()
    assert "WorkerLostError" in log or "SIGKILL" in log
    assert deliveries(svc, run_id(svc, "sigkill")) == [1, 1, 2]  # delivered again
    assert_counted_once(svc, "sigkill", names, tasks=3)
    assert_records_created_once(proxy, "sigkill", names)
    # skipped: clip-02 (record there) is neither read nor written again
    assert source_gets(proxy, "sigkill", "clip-02.wav") == 1
    assert [q.status for q in puts(proxy, "sigkill", "clip-02.wav", "overlay.jpg")] == [200]
    # rewritten harmlessly: clip-03 read twice, each output written twice with equal bytes
    assert source_gets(proxy, "sigkill", "clip-03.wav") == 2
    statuses = [q.status for q in puts(proxy, "sigkill", "clip-03.wav", "record.json")]
    assert statuses == ["stalled", 200]
    for name in ("spectrogram.png", "overlay.jpg", "cam.npz"):
        twice = puts(proxy, "sigkill", "clip-03.wav", name)
        assert [q.status for q in twice] == [200, 200], name
        assert twice[0].etag == twice[1].etag, name  # ETag: md5 of the bytes written


def test_sigterm_warm_shutdown_finishes_the_task_and_a_restart_finishes_the_run(svc):
    """Warm shutdown writes the task in hand and acks it: nothing is redelivered or redone."""
    names = {f"clip-{i:02d}.wav": b for i, b in enumerate(clips(6))}
    upload(svc, "sigterm", names)
    with FaultProxy(svc["s3"].port, fail_rate=0) as proxy:
        s3 = proxy.endpoint_url
        w = worker(
            svc,
            "sigterm-1",
            ECHOCAM_FAULTS=json.dumps({"sleep": {"clip-00": 5}}),
            ECHOCAM_S3_ENDPOINT_URL=s3,
        )
        try:
            produce(svc, "sigterm")
            wait_log(w, "echocam fault: sleeping")
            os.kill(w.proc.pid, signal.SIGTERM)  # the main process: warm shutdown
            assert w.proc.wait(90) == 0
            assert "succeeded" in w.log_path.read_text()
        finally:
            w.stop()
        # the task in hand ([clip-00, clip-01]) was finished, not dropped, and nothing else begun
        assert_records_created_once(proxy, "sigterm", ["clip-00.wav", "clip-01.wav"])
        w2 = worker(svc, "sigterm-2", ECHOCAM_S3_ENDPOINT_URL=s3)
        try:
            assert_exactly_once(finish(svc, "sigterm"), names)
        finally:
            w2.stop()
    assert deliveries(svc, run_id(svc, "sigterm")) == [1, 1, 1]  # acked: never redelivered
    assert_counted_once(svc, "sigterm", names, tasks=3)
    assert_records_created_once(proxy, "sigterm", names)
    assert all(source_gets(proxy, "sigterm", n) == 1 for n in names)  # none redone
    assert "echocam fault: sleeping" not in w2.log_path.read_text()


def test_redis_restart_mid_run(svc):
    """Redis crashes while a task is in flight and ``status --wait`` is polling: the worker and
    the waiting client reconnect, the cut-off task is delivered again, the run completes."""
    names = {f"clip-{i:02d}.wav": b for i, b in enumerate(clips(8))}
    upload(svc, "redis", names)
    out = f"s3://{BUCKET}/out-redis"
    with FaultProxy(svc["s3"].port, fail_rate=0) as proxy:
        w = worker(
            svc,
            "redis",
            ECHOCAM_FAULTS=json.dumps({"sleep": {"clip-03": 12}}),  # task [clip-02, clip-03]
            ECHOCAM_S3_ENDPOINT_URL=proxy.endpoint_url,
            # the cut-off task comes back after the visibility timeout: keep it short
            ECHOCAM_TASK_SOFT_TIME_LIMIT="18",
            ECHOCAM_TASK_TIME_LIMIT="22",
            ECHOCAM_VISIBILITY_TIMEOUT="25",
        )
        status_err = svc["dir"] / "status-redis.err"
        try:
            produce(svc, "redis")
            status = subprocess.Popen(
                [sys.executable, "-m", "echocam_cli", "status", out, "--wait", "--timeout", "200"],
                env=svc["env"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=status_err.open("wb"),
                text=True,
            )
            try:
                # its progress bar shows counters: it has read Redis at least once
                wait_for(lambda: b"ok=" in status_err.read_bytes(), 60, "status --wait polling")
                wait_log(w, "'clip-03.wav']")  # the fault sleep: the task is in flight
                svc["redis"].kill()  # a crash (SIGKILL); the AOF keeps what was acknowledged
                time.sleep(3)  # long enough for clients' own retries (< 1 s) to give up
                svc["redis"].start()
                stdout, _ = status.communicate(timeout=240)
            finally:
                if status.poll() is None:
                    status.kill()
                    status.wait(10)
            assert status.returncode == 0, status_err.read_text()[-2000:]
            assert "8 ok, 0 failed, 0 remaining of 8" in stdout, stdout
            rows = finish(svc, "redis")
            assert w.proc.poll() is None
        finally:
            w.stop()
    assert_exactly_once(rows, names)
    log = w.log_path.read_text()
    sleeps = [ln for ln in log.splitlines() if "echocam fault: sleeping" in ln]
    assert len(sleeps) == 2 and all("'clip-03.wav']" in ln for ln in sleeps), sleeps
    assert deliveries(svc, run_id(svc, "redis")) == [1, 1, 1, 2]  # the cut-off task ran again
    assert_counted_once(svc, "redis", names, tasks=4)
    assert_records_created_once(proxy, "redis", names)


def test_s3_errors_and_dropped_connections_are_retried(svc):
    names = {f"clip-{i:02d}.wav": b for i, b in enumerate(clips(6))}
    upload(svc, "flaky", names)
    with FaultProxy(svc["s3"].port, fail_rate=0.2, seed=7) as proxy:
        w = worker(svc, "flaky", ECHOCAM_S3_ENDPOINT_URL=proxy.endpoint_url)
        try:
            produce(svc, "flaky", wait=True)
        finally:
            w.stop()
    assert_exactly_once(manifest(svc, "flaky"), names)
    assert proxy.counts["503"] > 0 and proxy.counts["dropped"] > 0
    assert_records_created_once(proxy, "flaky", names)
    assert_counted_once(svc, "flaky", names, tasks=3)


def test_s3_faults_that_outlast_botocore_retries(svc):
    """A source that fails every read becomes a download_failed record; a record write that
    fails every botocore attempt raises out of run_chunks and Celery retries the whole task,
    whose second run skips the finished recording and writes the other."""
    tries = 2  # ECHOCAM_S3_MAX_ATTEMPTS for this worker: attempts per request, the first included
    names = {f"clip-{i:02d}.wav": b for i, b in enumerate(clips(5))}
    names["unreadable.wav"] = clips(6)[5]
    upload(svc, "outlast", names)  # tasks: [00, 01], [02, 03], [04, unreadable]
    unreadable = Rule("GET", f"/{BUCKET}/outlast/unreadable.wav")  # every time
    record_03 = f"/{BUCKET}/out-outlast/clip-03.wav/record.json"
    write = Rule("PUT", record_03, times=tries)  # every try of the first delivery
    with FaultProxy(svc["s3"].port, fail_rate=0, rules=[unreadable, write]) as proxy:
        w = worker(
            svc,
            "outlast",
            ECHOCAM_S3_ENDPOINT_URL=proxy.endpoint_url,
            ECHOCAM_S3_MAX_ATTEMPTS=str(tries),
        )
        try:
            produce(svc, "outlast", wait=True)
        finally:
            w.stop()
    rows = manifest(svc, "outlast")
    assert_exactly_once(rows, names, {"unreadable.wav": "download_failed"})
    row = next(r for r in rows if r["source_key"] == "unreadable.wav")
    assert "cannot read source" in row["error_message"] and "SlowDown" in row["error_message"]
    gets = proxy.requests("GET", f"/{BUCKET}/outlast/unreadable.wav")
    assert [q.status for q in gets] == [503] * tries  # botocore gave up; no task retry
    # the whole-task retry: one Celery retry, after which the record write went through
    log = w.log_path.read_text()
    assert log.count("Retry in") == 1 and "SlowDown" in log, w.log_tail()
    assert [q.status for q in proxy.requests("PUT", record_03)] == [503] * tries + [200]
    assert deliveries(svc, run_id(svc, "outlast")) == [1, 1, 2]
    assert source_gets(proxy, "outlast", "clip-02.wav") == 1  # done: skipped by the retry
    assert source_gets(proxy, "outlast", "clip-03.wav") == 2  # redone by the retry
    assert_counted_once(svc, "outlast", names, tasks=3, failed=1)
    c = counters(svc, run_id(svc, "outlast"))
    assert c["error:download_failed"] == 1, c
    assert_records_created_once(proxy, "outlast", names)


def test_a_worker_process_killed_mid_compaction_is_redelivered_and_the_manifest_written(svc):
    """The run-end compaction's process dies (SIGKILL) while it uploads the manifest: the task
    comes back (acked late) and a new process writes every table, each source once."""
    names = {f"clip-{i:02d}.wav": b for i, b in enumerate(clips(4))}
    upload(svc, "killcompact", names)
    table = f"/{BUCKET}/out-killcompact/manifest.jsonl"
    held = Rule("PUT", table, "stall", times=1)
    rows, proxy, _ = run_killed_while_held(svc, "killcompact", held, "the manifest's PUT held")
    assert_exactly_once(rows, names)
    assert [q.status for q in proxy.requests("PUT", table)] == ["stalled", 200]
    assert_counted_once(svc, "killcompact", names, tasks=2)
    c = counters(svc, run_id(svc, "killcompact"))
    assert c["compacted"] == 1 and "compaction_failed" not in c, c


def test_a_manifest_that_cannot_be_written_is_reported_and_echocam_manifest_writes_it(svc):
    """The run-end compaction fails (a fault, as a full disk would): `produce --wait` says so
    and how to finish, exits 1, the worker lives on, and `echocam manifest` writes it."""
    names = {f"clip-{i:02d}.wav": b for i, b in enumerate(clips(3))}
    upload(svc, "nomanifest", names)
    out = f"s3://{BUCKET}/out-nomanifest"
    fault = json.dumps({"compaction_raise": "out-nomanifest"})
    w = worker(svc, "nomanifest", ECHOCAM_FAULTS=fault)
    try:
        proc = echocam(
            svc["env"], "produce", f"s3://{BUCKET}/nomanifest", "--out", out, "--wait",
            "--timeout", "300",
        )  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "3 ok, 0 failed, 0 remaining of 3" in proc.stdout, proc.stdout
        assert "manifest failed: RuntimeError: echocam fault: compaction" in proc.stdout
        assert f"`echocam manifest {out}` writes it" in proc.stdout
        state = json.loads(echocam(svc["env"], "status", out, "--json").stdout)
        assert state["finished"] and state["manifest"] == "failed", state
        assert w.proc.poll() is None  # the worker lives on
    finally:
        w.stop()
    keys = svc["client"].list_objects_v2(Bucket=BUCKET, Prefix="out-nomanifest/")["Contents"]
    assert not [o["Key"] for o in keys if o["Key"].endswith("manifest.jsonl")]
    man = echocam(svc["env"], "manifest", out)
    assert man.returncode == 0, man.stderr
    assert_exactly_once(manifest(svc, "nomanifest"), names)


@pytest.fixture(scope="module")
@marks("worker")
def poison_run(services, request):
    """A task that crashes its process every time, one that hangs, and ordinary ones, run by
    a worker of this fixture's own (stopped once the run is done): the recordings, the
    manifest's rows, whether the worker lived to the run's end, and its log."""
    svc = own(services, request)
    names = {f"clip-{i:02d}.wav": b for i, b in enumerate(clips(4))}
    names["poison.wav"], names["hang.wav"] = clips(2, seconds=2.0)
    upload(svc, "poison", names)
    w = worker(
        svc,
        "poison",
        ECHOCAM_FAULTS=json.dumps({"crash": "poison", "sleep": {"hang": 60}}),
        ECHOCAM_TASK_SOFT_TIME_LIMIT="4",
        ECHOCAM_TASK_TIME_LIMIT="10",
        ECHOCAM_MAX_DELIVERIES="2",
    )
    produce(svc, "poison", "--task-size", "1", wait=True)
    rows, lived = manifest(svc, "poison"), w.proc.poll() is None
    w.stop()
    return names, rows, lived, w.log_path.read_text()


def test_poison_task_is_failed_after_bounded_deliveries(poison_run):
    names, rows, lived, log = poison_run
    assert_exactly_once(rows, names, {"poison.wav": "worker_lost", "hang.wav": "timeout"})
    assert lived  # the worker lives on
    assert log.count("crashing pool process") == 2  # max_deliveries


def test_task_over_the_soft_time_limit_fails_with_timeout(poison_run):
    names, rows, _, _ = poison_run
    row = next(r for r in rows if r["source_key"] == "hang.wav")
    assert row["error_code"] == "timeout" and "soft time limit" in row["error_message"]
    assert sum(r["status"] == "ok" for r in rows) == len(names) - 2


def task_keys(raw: bytes) -> tuple[str, list[str]]:
    """(run id, source keys) of a task message as it waits in the Redis queue."""
    msg = json.loads(raw)
    assert msg["properties"]["body_encoding"] == "base64"
    (items, run), _, _ = json.loads(base64.b64decode(msg["body"]))
    return run["run_id"], [key for key, _, _ in items]


def test_producer_killed_halfway_then_restarted(svc, species_checkpoint):
    """A producer killed halfway leaves some tasks queued; once they are done, a second
    producer enqueues exactly the recordings that have no current record, and skips the rest."""
    from echocam.explain.model import load_model

    names = {f"many-{i:03d}.wav": b for i, b in enumerate(clips(40, seconds=1.0))}
    upload(svc, "many", names)
    sha = load_model(str(species_checkpoint)).sha256
    r = svc["redis"].client()
    env, queue = svc["env"], svc["env"]["ECHOCAM_QUEUE"]  # only this test's worker consumes it
    args = [
        sys.executable,
        "-m",
        "echocam_cli",
        "produce",
        f"s3://{BUCKET}/many",
        "--out",
        f"s3://{BUCKET}/out-many",
        "--task-size",
        "1",
        "--page-size",
        "5",
        "--model-sha256",
        sha,
    ]
    first = subprocess.Popen(
        args,
        env={**env, "ECHOCAM_FAULTS": '{"send_delay": 0.1}'},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(svc["dir"] / "producer.log").open("wb"),
    )
    try:
        wait_for(lambda: r.llen(queue) >= 10, 60, "10 tasks enqueued")
    finally:
        first.kill()
        first.wait(10)
    queued = r.lrange(queue, 0, -1)
    assert 10 <= len(queued) < len(names)
    secret = svc["env"]["AWS_SECRET_ACCESS_KEY"].encode()
    for raw in queued:  # JSON, and no credentials in task messages
        msg = json.loads(raw)
        assert msg["content-type"] == "application/json"
        assert secret not in raw and svc["env"]["AWS_ACCESS_KEY_ID"].encode() not in raw
    (first_run,) = {task_keys(raw)[0] for raw in queued}
    first_keys = [key for raw in queued for key in task_keys(raw)[1]]
    assert len(set(first_keys)) == len(first_keys) == len(queued)

    w = worker(svc, "many")
    try:
        # the first run's tasks, all of them and nothing else, are done before the restart
        tasks = f"echocam:run:{first_run}:tasks"
        wait_for(lambda: r.scard(tasks) == len(queued), 180, "the first producer's tasks done")
        assert r.llen(queue) == 0
        listed = svc["client"].list_objects_v2(Bucket=BUCKET, Prefix="out-many/")["Contents"]
        records = [o["Key"] for o in listed if o["Key"].endswith("/record.json")]
        done = {k[len("out-many/") : -len("/record.json")] for k in records}
        assert done == set(first_keys)
        todo = set(names) - done

        second = subprocess.run(
            args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 0, second.stderr
        m = re.search(
            r"run (\w+): enqueued (\d+) recordings in (\d+) tasks; skipped (\d+) already done",
            second.stdout,
        )
        assert m, second.stdout
        second_run, enqueued, n_tasks, skipped = m[1], int(m[2]), int(m[3]), int(m[4])
        assert (enqueued, n_tasks, skipped) == (len(todo), len(todo), len(done))
        c = counters(svc, second_run)
        assert (c["enqueued"], c["tasks_enqueued"], c["skipped"]) == (
            len(todo),
            len(todo),
            len(done),
        )
        assert c["producer_done"] == 1
        assert_exactly_once(finish(svc, "many"), names)
    finally:
        w.stop()
    assert r.llen(queue) == 0
    # which run wrote each record: the first run the keys it had queued, the second the rest
    by_run = {}
    for key in names:
        rec = svc["client"].get_object(Bucket=BUCKET, Key=f"out-many/{key}/record.json")
        by_run[key] = json.loads(rec["Body"].read())["run_id"]
    assert {k for k, rid in by_run.items() if rid == first_run} == done
    assert {k for k, rid in by_run.items() if rid == second_run} == todo
    assert counters(svc, first_run)["ok"] == len(done)
    c = counters(svc, second_run)
    assert c["ok"] == c["tasks_done"] == c["task_ids"] == len(todo), c
