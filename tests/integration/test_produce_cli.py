"""`echocam produce` as a user runs it, against real Redis, a real S3 server and a real worker:
waiting for workers that are still starting, progress while enqueuing, --dry-run, --limit and
--retry-failed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from devtools.services import RedisServer, SeaweedS3
from devtools.stack import ROOT, Worker, echocam
from tests.helpers import chirp, marks, own_queue, start_worker, wav_bytes

pytestmark = pytest.mark.slow
BUCKET = "produce-cli"


def clip(i: int) -> bytes:
    """A distinct 2 s chirp (its own ETag)."""
    return wav_bytes(chirp(2.0, 22050, f0=500.0 + 100 * i), 22050)


@pytest.fixture(scope="module")
@marks("redis", "s3")
def services(tmp_path_factory, species_checkpoint):
    """Redis + SeaweedFS for the module; each test starts its own worker."""
    d = tmp_path_factory.mktemp("produce-cli")
    with RedisServer(password="produce-pw") as redis_srv, SeaweedS3() as s3:
        s3.create_bucket(BUCKET)
        env = {
            **os.environ,
            **s3.env(),
            "ECHOCAM_BROKER_URL": redis_srv.url,
            "ECHOCAM_WEIGHTS": str(species_checkpoint),
            "ECHOCAM_THREADS": "1",
            "ECHOCAM_TASK_SIZE": "2",
        }
        yield {"env": env, "client": s3.client(), "redis": redis_srv, "dir": d}


@pytest.fixture
@marks("worker")
def svc(services, request):
    """The services with this test's own queue, and (once started) its worker."""
    env = {**services["env"], "ECHOCAM_QUEUE": own_queue(request)}
    return {**services, "env": env, "request": request, "worker": None}


def start(svc) -> Worker:
    """The test's worker, on its queue (stopped at the test's end); not waited for."""
    request = svc["request"]
    svc["worker"] = start_worker(
        request, svc["env"], name=request.node.name[:40], log_dir=svc["dir"], ready=False
    )
    return svc["worker"]


@pytest.fixture
def worker(svc) -> Worker:
    w = start(svc)
    w.wait_ready()
    return w


def upload(svc, prefix: str, items: dict[str, bytes]) -> None:
    for name, data in items.items():
        svc["client"].put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=data)


def produce(svc, prefix: str, *args: str, wait: bool = True) -> subprocess.CompletedProcess:
    proc = echocam(
        svc["env"],
        "produce",
        f"s3://{BUCKET}/{prefix}",
        "--out",
        f"s3://{BUCKET}/out/{prefix}",
        *args,
        *(["--wait", "--timeout", "300"] if wait else []),
    )
    tail = svc["worker"].log_tail() if svc["worker"] else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\n" + tail
    return proc


def enqueued(proc: subprocess.CompletedProcess) -> int:
    return int(re.search(r"enqueued (\d+) recordings", proc.stdout).group(1))


def records(svc, prefix: str) -> dict[str, dict]:
    out = {}
    pages = (
        svc["client"]
        .get_paginator("list_objects_v2")
        .paginate(Bucket=BUCKET, Prefix=f"out/{prefix}/")
    )
    for page in pages:
        for obj in page.get("Contents", ()):
            if obj["Key"].endswith("/record.json"):
                body = svc["client"].get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
                rec = json.loads(body)
                out[rec["source_key"]] = rec
    return out


def test_produce_keeps_asking_until_a_worker_that_starts_later_answers(svc):
    """Produce first, worker second; produce enqueues once the worker is up."""
    assert svc["worker"] is None, "this test needs to start the first worker itself"
    upload(svc, "late", {"a.wav": clip(0), "b.wav": clip(1)})
    log = (svc["dir"] / "produce-late.log").open("w")
    cmd = [sys.executable, "-m", "echocam_cli", "produce", f"s3://{BUCKET}/late"]
    cmd += ["--out", f"s3://{BUCKET}/out/late", "--describe-timeout", "120"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=svc["env"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        time.sleep(4)  # produce has broadcast (at least once) to no one
        assert proc.poll() is None, (svc["dir"] / "produce-late.log").read_text()
        w = start(svc)
        answered = None  # when the worker's consumer was up and could answer
        while proc.poll() is None:
            if answered is None and b" ready." in w.log_path.read_bytes():
                answered = time.monotonic()
            assert time.monotonic() - t0 < 130, "produce still running after its timeout"
            time.sleep(0.2)
        done = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    out = (svc["dir"] / "produce-late.log").read_text()
    assert proc.returncode == 0, out + w.log_tail()
    assert "enqueued 2 recordings" in out
    answered = answered or done
    # It returned soon after the worker could answer, well before its 120 s.
    assert done - answered < 15, (done - answered, out)
    assert done - t0 < 100, done - t0
    w.wait_ready()


def test_produce_returns_as_soon_as_a_running_worker_answers(svc, worker):
    upload(svc, "quick", {"a.wav": clip(2)})
    t0 = time.monotonic()
    proc = produce(svc, "quick", "--describe-timeout", "60", wait=False)
    assert enqueued(proc) == 1
    # A broadcast used to collect replies for the whole --describe-timeout.
    assert time.monotonic() - t0 < 30


def bars(stderr: str) -> list[tuple[int, int, int]]:
    """(listed, enqueued, skipped) of each state of produce's progress bar."""
    pattern = r"listed: (\d+) rec \[[^\]]*?enqueued=(\d+), skipped=(\d+)\]"
    return [tuple(map(int, m.groups())) for m in re.finditer(pattern, stderr)]


def test_produce_shows_listed_enqueued_skipped_while_it_works(svc, worker):
    """A bar on stderr from the first key on, not one line at the end."""
    upload(svc, "progress", {f"r{i}.wav": clip(10 + i) for i in range(3)})
    upload(svc, "progress", {"notes.txt": b"not audio"})
    produce(svc, "progress")
    upload(svc, "progress", {f"r{i}.wav": clip(10 + i) for i in range(3, 6)})
    # Each send pauses (the fault hook): the bar must show the states in between.
    slow = {**svc["env"], "ECHOCAM_FAULTS": json.dumps({"send_delay": 0.4})}
    proc = echocam(
        slow,
        "produce",
        f"s3://{BUCKET}/progress",
        "--out",
        f"s3://{BUCKET}/out/progress",
        "--task-size",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    states = bars(proc.stderr)
    assert states[-1] == (6, 3, 3), proc.stderr
    assert any(0 < enq < 3 for _, enq, _ in states), states  # shown while enqueuing
    assert enqueued(proc) == 3


def run_json(svc, prefix: str) -> bytes:
    return svc["client"].get_object(Bucket=BUCKET, Key=f"out/{prefix}/run.json")["Body"].read()


def lines(proc: subprocess.CompletedProcess) -> set[tuple[str, ...]]:
    return {tuple(line.split("\t")) for line in proc.stdout.splitlines() if "\t" in line}


def test_dry_run_writes_nothing_and_limit_takes_a_subset(svc, worker):
    """--dry-run says what would be enqueued and skipped, and why; --limit N."""
    upload(svc, "dry", {"a0.wav": clip(20), "a1.wav": clip(21), "bad.wav": b"not audio at all"})
    upload(svc, "dry", {"notes.txt": b"field notes"})
    produce(svc, "dry")
    upload(svc, "dry", {"a2.wav": clip(22), "a3.wav": clip(23)})
    run_before = run_json(svc, "dry")
    r = svc["redis"].client()
    counters_before = set(r.scan_iter(match="echocam:run:*"))

    proc = produce(svc, "dry", "--dry-run", wait=False)
    done = "done (current record)"
    assert lines(proc) == {
        ("skip", "a0.wav", done),
        ("skip", "a1.wav", done),
        ("skip", "bad.wav", done),  # undecodable: a fact about the input, current
        ("process", "a2.wav"),
        ("process", "a3.wav"),
        ("skip", "notes.txt", "extension"),
    }, proc.stdout
    assert "would process 2, skip 4" in proc.stdout
    proc = produce(svc, "dry", "--dry-run", "--retry-failed", wait=False)
    assert ("process", "bad.wav") in lines(proc) and ("process", "a2.wav") not in lines(proc)
    proc = produce(svc, "dry", "--dry-run", "--limit", "1", wait=False)
    assert {x for x in lines(proc) if x[0] == "process"} == {("process", "a2.wav")}
    time.sleep(3)  # had anything been enqueued, the running worker would be writing it now
    assert run_json(svc, "dry") == run_before  # no run.json
    assert set(r.scan_iter(match="echocam:run:*")) == counters_before  # no run, no tasks
    assert "a2.wav" not in records(svc, "dry") and "a3.wav" not in records(svc, "dry")

    proc = produce(svc, "dry", "--limit", "1")
    assert enqueued(proc) == 1
    assert sorted(records(svc, "dry")) == ["a0.wav", "a1.wav", "a2.wav", "bad.wav"]
    assert enqueued(produce(svc, "dry")) == 1  # the rest
    assert "a3.wav" in records(svc, "dry")


def test_retry_failed_redoes_failed_records_only(svc, worker):
    """Failed records (current ones too) are redone by the workers; ok recordings and
    recordings with no record are left alone; --codes narrows to those codes."""
    upload(svc, "retry", {"ok.wav": clip(30), "empty.wav": b"", "junk.wav": b"no audio here"})
    produce(svc, "retry")
    first = records(svc, "retry")
    assert first["empty.wav"]["error_code"] == "empty"
    assert first["junk.wav"]["error_code"] == "undecodable"
    upload(svc, "retry", {"new.wav": clip(31)})

    proc = produce(svc, "retry", "--retry-failed", "--codes", "empty")
    assert enqueued(proc) == 1
    # what the three skipped recordings are, in produce's line and in the run's status
    why = "not selected (not failed with empty, or no record yet)"
    assert f"skipped 3 {why} (fingerprint" in proc.stdout, proc.stdout
    assert f"(3 skipped: {why})" in proc.stdout, proc.stdout
    run_id = json.loads(run_json(svc, "retry"))["run_id"]
    second = records(svc, "retry")
    # The worker redid it (a current failed record, which it would otherwise skip as done).
    assert second["empty.wav"]["run_id"] == run_id != first["empty.wav"]["run_id"]
    assert second["junk.wav"] == first["junk.wav"]
    assert second["ok.wav"] == first["ok.wav"]
    assert "new.wav" not in second

    proc = produce(svc, "retry", "--retry-failed")
    assert enqueued(proc) == 2
    run_id = json.loads(run_json(svc, "retry"))["run_id"]
    third = records(svc, "retry")
    assert third["empty.wav"]["run_id"] == third["junk.wav"]["run_id"] == run_id
    assert third["ok.wav"] == first["ok.wav"]
    assert "new.wav" not in third
    # A plain run still skips current failures, and does the new recording.
    proc = produce(svc, "retry")
    assert enqueued(proc) == 1 and "(3 skipped: already done)" in proc.stdout, proc.stdout
    assert records(svc, "retry")["junk.wav"] == third["junk.wav"]


def test_reruns_and_compaction_read_listings_not_records(svc, worker):
    """Through the fault proxy, which logs every request of `produce` and `manifest`:
    a re-run skips everything and a changed object or parameter is redone, without reading one
    record; compaction reads shards, not records."""
    from devtools.faultproxy import FaultProxy

    names = {f"r{i}.wav": clip(40 + i) for i in range(6)}
    upload(svc, "listing", names)
    assert enqueued(produce(svc, "listing")) == 6  # the worker writes records, markers, shards
    port = int(svc["env"]["ECHOCAM_S3_ENDPOINT_URL"].rsplit(":", 1)[1])
    with FaultProxy(port, fail_rate=0) as proxy:
        proxied = {**svc["env"], "ECHOCAM_S3_ENDPOINT_URL": proxy.endpoint_url}

        def run(*args: str) -> int:
            before = len(proxy.log)
            proc = echocam(
                proxied, "produce", f"s3://{BUCKET}/listing", "--out",
                f"s3://{BUCKET}/out/listing", *args, "--wait", "--timeout", "300",
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr + svc["worker"].log_tail()
            reads = [q for q in proxy.log[before:] if q.path.endswith("/record.json")]
            assert [q.method for q in reads] == [], reads
            return enqueued(proc)

        assert run() == 0
        upload(svc, "listing", {"r0.wav": clip(99)})  # a new ETag
        assert run() == 1
        assert run("--top-k", "2") == 6  # a new fingerprint
        assert run("--top-k", "2") == 0
        before = len(proxy.log)
        man = echocam(proxied, "manifest", f"s3://{BUCKET}/out/listing")
        assert man.returncode == 0, man.stderr
        gets = [q.path for q in proxy.log[before:] if q.method == "GET"]
        assert not [p for p in gets if p.endswith("/record.json")], gets
        assert len([p for p in gets if "/_manifest/shards/" in p]) == 1  # consolidated by --wait
    rows = [json.loads(line) for line in get_manifest(svc, "listing").splitlines()]
    assert sorted(r["source_key"] for r in rows) == sorted(names)
    assert len({r["fingerprint"] for r in rows}) == 1


def get_manifest(svc, prefix: str) -> str:
    key = f"out/{prefix}/manifest.jsonl"
    return svc["client"].get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def listed_keys(svc, prefix: str) -> list[str]:
    pages = svc["client"].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", ())]


def summary(svc, prefix: str) -> dict:
    key = f"out/{prefix}/summary.json"
    return json.loads(svc["client"].get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_a_run_ends_with_its_manifest_and_a_folded_index_without_waiting(svc, worker):
    """Nobody waits and nobody runs `echocam manifest`: the worker that finishes the last task
    has one write the manifest, which folds the index; a re-run with nothing to do leaves it as
    it is, unless something was written since."""
    names = {f"a{i}.wav": clip(60 + i) for i in range(5)}
    upload(svc, "auto", names)
    assert enqueued(produce(svc, "auto", wait=False)) == 5
    out = f"s3://{BUCKET}/out/auto"
    st = echocam(svc["env"], "status", out, "--wait", "--timeout", "300")
    assert st.returncode == 0, st.stdout + st.stderr + worker.log_tail()
    assert "5 ok, 0 failed, 0 remaining of 5" in st.stdout and "; manifest written" in st.stdout
    rows = [json.loads(line) for line in get_manifest(svc, "auto").splitlines()]
    assert sorted(r["source_key"] for r in rows) == sorted(names)
    run_json = svc["client"].get_object(Bucket=BUCKET, Key="out/auto/run.json")["Body"].read()
    run = json.loads(run_json)
    first = summary(svc, "auto")
    assert first["run_id"] == run["run_id"] and first["by_status"] == {"ok": 5}
    index_keys = listed_keys(svc, "out/auto/_index/")
    assert len(index_keys) == 1 and "/_index/_segments/" in index_keys[0], index_keys  # folded
    assert listed_keys(svc, "out/auto/_manifest/shards/") == [f"out/auto/{first['shard']}"]

    # nothing to do, nothing written since: the manifest is current, not rewritten
    assert enqueued(produce(svc, "auto", wait=False)) == 0
    st = echocam(svc["env"], "status", out, "--wait", "--timeout", "300")
    assert "; manifest written" in st.stdout, st.stdout + worker.log_tail()
    assert summary(svc, "auto")["compacted_at"] == first["compacted_at"]
    assert "current already" in worker.log_path.read_text()

    # nothing to do, but the tables are gone: the re-run has a worker write them again
    svc["client"].delete_object(Bucket=BUCKET, Key="out/auto/summary.json")
    assert enqueued(produce(svc, "auto", wait=False)) == 0
    st = echocam(svc["env"], "status", out, "--wait", "--timeout", "300")
    assert "; manifest written" in st.stdout, st.stdout + worker.log_tail()
    again = summary(svc, "auto")
    assert again["compacted_at"] > first["compacted_at"] and again["recordings"] == 5
