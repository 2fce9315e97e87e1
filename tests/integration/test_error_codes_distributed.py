"""Transient error codes (docs/reference/errors.md), produced by real inputs through a live worker.

`model_mismatch`, `download_failed` and `invalid_params`, each from something a user or a bucket
can really do (the first two are shown to be retried by the next run, the third not), and
`internal` from an injected error.  One stack for the module:
real Redis, SeaweedFS and one `echocam worker` process.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import soundfile as sf

from devtools.services import RedisServer, SeaweedS3
from devtools.stack import echocam
from tests.helpers import ROOT, marks, own_queue, start_worker, wav_bytes

pytestmark = pytest.mark.slow
BUCKET = "claims-dist"


def clips(n: int) -> list[bytes]:
    """``n`` distinct 3-s clips of the real recordings in ``samples/`` (one window each)."""
    out = []
    for i in range(n):
        y, sr = sf.read(sorted((ROOT / "samples").glob("S4A*.wav"))[i % 2], dtype="float32")
        start = (i // 2) * 3 * sr
        out.append(wav_bytes(y[start : start + 3 * sr], sr))
    return out


@pytest.fixture(scope="module")
@marks("redis", "s3", "worker")
def stack(tmp_path_factory, species_checkpoint, request):
    d = tmp_path_factory.mktemp("claims-stack")
    with RedisServer() as redis_srv, SeaweedS3() as s3:
        s3.create_bucket(BUCKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOCAM_")}
        env.update(
            s3.env(),
            ECHOCAM_BROKER_URL=redis_srv.url,
            ECHOCAM_QUEUE=own_queue(request),
            ECHOCAM_WEIGHTS=str(species_checkpoint),
            ECHOCAM_THREADS="1",
            ECHOCAM_BATCH_SIZE="8",
        )
        # an unexpected error in tasks holding such a key (echocam/bucket/faults.py): internal
        worker_env = {**env, "ECHOCAM_FAULTS": json.dumps({"raise": "raise-internal"})}
        worker = start_worker(request, worker_env, name="claims", log_dir=d)
        try:
            yield {"env": env, "s3": s3.client(), "redis": redis_srv, "worker": worker}
        finally:
            worker.stop()


def upload(stack, prefix: str, items: dict[str, bytes]) -> None:
    for name, data in items.items():
        stack["s3"].put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=data)


def cli(stack, *args: str) -> str:
    proc = echocam(stack["env"], *args, timeout=600)
    assert proc.returncode == 0, proc.stderr + "\n" + stack["worker"].log_tail()
    return proc.stdout


def produce(stack, prefix: str, *args: str, wait: bool = True) -> int:
    """``echocam produce s3://BUCKET/PREFIX --out s3://BUCKET/out-PREFIX``: recordings enqueued."""
    out = cli(
        stack,
        "produce",
        f"s3://{BUCKET}/{prefix}",
        "--out",
        f"s3://{BUCKET}/out-{prefix}",
        "--task-size",
        "2",
        *args,
        *(["--wait", "--timeout", "300"] if wait else []),
    )
    return int(re.search(r"enqueued (\d+) recordings", out).group(1))


def manifest(stack, prefix: str) -> dict[str, dict]:
    body = stack["s3"].get_object(Bucket=BUCKET, Key=f"out-{prefix}/manifest.jsonl")["Body"]
    rows = [json.loads(line) for line in body.read().decode().splitlines()]
    return {r["source_key"]: r for r in rows}


def record(stack, key: str) -> dict:
    return json.loads(stack["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_model_mismatch_when_the_run_names_another_model_then_retried(stack):
    upload(stack, "mismatch", dict(zip(["a.wav", "b.wav"], clips(2), strict=True)))
    other = "0123456789ab" + "0" * 52  # the run says: a model the workers do not hold
    assert produce(stack, "mismatch", "--model-sha256", other) == 2
    rows = manifest(stack, "mismatch")
    assert {k: r["error_code"] for k, r in rows.items()} == {
        "a.wav": "model_mismatch",
        "b.wav": "model_mismatch",
    }
    assert all("does not match the run's 0123456789ab" in r["error_message"] for r in rows.values())
    # transient: the next run (asking the workers for their model) redoes both
    assert produce(stack, "mismatch") == 2
    assert {r["status"] for r in manifest(stack, "mismatch").values()} == {"ok"}


def test_download_failed_when_an_object_vanishes_before_the_worker_reads_it(stack, species_model):
    from celery import Celery

    data = dict(zip(["kept.wav", "gone.wav"], clips(2), strict=True))
    upload(stack, "vanish", data)
    parked = stack["env"]["ECHOCAM_QUEUE"] + "-parked"  # no worker consumes it yet: it waits
    n = produce(
        stack, "vanish", "--queue", parked, "--model-sha256", species_model.sha256, wait=False
    )
    assert n == 2
    stack["s3"].delete_object(Bucket=BUCKET, Key="vanish/gone.wav")
    app = Celery("claims-test", broker=stack["redis"].url)
    try:
        replies = app.control.add_consumer(parked, reply=True, timeout=10)
        assert replies, "the worker did not answer add_consumer"
        cli(stack, "status", f"s3://{BUCKET}/out-vanish", "--wait", "--timeout", "300")
    finally:
        app.control.cancel_consumer(parked, reply=True, timeout=10)
    kept, gone = (record(stack, f"out-vanish/{k}/record.json") for k in ("kept.wav", "gone.wav"))
    assert kept["status"] == "ok"
    assert gone["error_code"] == "download_failed", gone
    assert "cannot read source" in gone["error_message"]
    # transient: once the object is back, the next run redoes it (and only it)
    upload(stack, "vanish", {"gone.wav": data["gone.wav"]})
    assert produce(stack, "vanish") == 1
    assert manifest(stack, "vanish")["gone.wav"]["status"] == "ok"


def test_internal_when_a_task_meets_an_unexpected_error(stack):
    names = ["raise-internal-a.wav", "raise-internal-b.wav"]
    upload(stack, "internal", dict(zip(names, clips(2), strict=True)))
    assert produce(stack, "internal") == 2
    rows = manifest(stack, "internal")
    assert {r["error_code"] for r in rows.values()} == {"internal"}
    for r in rows.values():
        assert r["error_message"].startswith("RuntimeError: echocam fault"), r["error_message"]
    assert stack["worker"].proc.poll() is None  # the worker lives on


def test_invalid_params_refused_by_the_producer_and_recorded_by_the_worker(stack, species_model):
    cases = [
        (["--top-k", "4"], "top_k 4 is above the model's 3 classes"),
        (["--classes", "Dodo"], "unknown classes ['Dodo']"),
    ]
    for i, (args, says) in enumerate(cases):
        prefix = f"params{i}"
        upload(stack, prefix, dict(zip(["a.wav", "b.wav"], clips(2), strict=True)))
        # the producer learns the workers' class names and stops before anything is written
        proc = echocam(
            stack["env"], "produce", f"s3://{BUCKET}/{prefix}", "--out",
            f"s3://{BUCKET}/out-{prefix}", *args, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2 and "[invalid_params]" in proc.stderr, proc.stderr
        assert says in proc.stderr and "Traceback" not in proc.stderr
        listed = stack["s3"].list_objects_v2(Bucket=BUCKET, Prefix=f"out-{prefix}/")
        assert "Contents" not in listed  # no run.json, no record
        # enqueued blind (--model-sha256: no worker asked), the worker records it, once
        sha = ["--model-sha256", species_model.sha256]
        assert produce(stack, prefix, *sha, *args) == 2
        rows = manifest(stack, prefix)
        assert {r["error_code"] for r in rows.values()} == {"invalid_params"}
        assert all(says in r["error_message"] for r in rows.values())
        assert produce(stack, prefix, *sha, *args) == 0  # not transient: not redone
    assert stack["worker"].proc.poll() is None
