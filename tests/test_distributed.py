"""The distributed path end to end: real Redis, a real S3 server, real worker processes."""

from __future__ import annotations

import io
import json
import os
import re
import time

import numpy as np
import pytest
from conftest import RECORDINGS, chirp, needs_shared, wav_bytes
from corpus import MAX_BYTES, MAX_DURATION_S, corpus
from corpus import SKIPPED as CORPUS_SKIPPED
from PIL import Image

from devtools.services import RedisServer, SeaweedS3
from devtools.stack import Worker, echocam

pytestmark = [pytest.mark.slow, needs_shared]

GOOD = [
    "spinetail_44k.wav",
    "S4A03895_20190522_000000.wav",
    "S4A03895_20190522_050000.wav",
    "S4A03895_20190522_070000.wav",
    "XC563936_soundscape_48k.mp3",
]
BAD = {
    "bad/empty.wav": (b"", "empty"),
    "bad/random.mp3": (np.random.default_rng(5).bytes(4000), "undecodable"),
    "bad/silent.flac": (wav_bytes(np.zeros(22050, np.float32), 22050, fmt="FLAC"), "silent"),
}
SKIPPED = {"site a/notes.txt": b"field notes: not audio"}
INPUT, OUTPUT = "s3://field-audio/survey 2019", "s3://cams-out/runs/one"
COMMON = ["--task-size", "2", "--page-size", "2"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, species_checkpoint):
    """Redis + SeaweedFS + one worker; input and output in different buckets."""
    d = tmp_path_factory.mktemp("stack")
    with RedisServer(password="redis pw/with:odd@chars") as redis_srv, SeaweedS3() as s3:
        s3.create_bucket("field-audio")
        s3.create_bucket("cams-out")
        client = s3.client()
        for i, name in enumerate(GOOD):
            key = f"survey 2019/site {'ab'[i % 2]}/{name}"
            client.put_object(Bucket="field-audio", Key=key, Body=(RECORDINGS / name).read_bytes())
        for key, data in {**{k: v for k, (v, _) in BAD.items()}, **SKIPPED}.items():
            client.put_object(Bucket="field-audio", Key=f"survey 2019/{key}", Body=data)
        env = {
            **os.environ,
            **s3.env(),
            "ECHOCAM_BROKER_URL": redis_srv.url,
            "ECHOCAM_QUEUE": "echocam-test",
            "ECHOCAM_WEIGHTS": str(species_checkpoint),
            "ECHOCAM_THREADS": "1",
            "ECHOCAM_BATCH_SIZE": "8",
        }
        worker = Worker(env, name="w1", log_dir=d).start()
        try:
            worker.wait_ready()
            yield {"env": env, "s3": client, "redis": redis_srv, "worker": worker}
        finally:
            worker.stop()


def produce(stack, *args: str, source: str = INPUT, out: str = OUTPUT) -> tuple[int, str]:
    proc = echocam(
        stack["env"],
        "produce",
        source,
        "--out",
        out,
        "--wait",
        "--timeout",
        "600",
        *COMMON,
        *args,
    )
    assert proc.returncode == 0, proc.stderr + "\n" + stack["worker"].log_tail()
    enqueued = int(re.search(r"enqueued (\d+) recordings", proc.stdout).group(1))
    return enqueued, proc.stdout


def manifest(client, prefix="runs/one"):
    body = client.get_object(Bucket="cams-out", Key=f"{prefix}/manifest.jsonl")["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines()]


def get(client, key: str) -> bytes:
    return client.get_object(Bucket="cams-out", Key=key)["Body"].read()


def test_end_to_end_every_input_once_with_outputs_or_error_code(stack):
    enqueued, out = produce(stack)
    assert enqueued == len(GOOD) + len(BAD)
    rows = manifest(stack["s3"])
    expected = sorted([f"site {'ab'[i % 2]}/{n}" for i, n in enumerate(GOOD)] + list(BAD))
    assert sorted(r["source_key"] for r in rows) == expected
    by_key = {r["source_key"]: r for r in rows}
    for key, (_, code) in BAD.items():
        assert by_key[key]["status"] == "failed" and by_key[key]["error_code"] == code
    for row in rows:
        if row["status"] != "ok":
            continue
        rec = json.loads(get(stack["s3"], f"runs/one/{row['record_key']}"))
        png = Image.open(io.BytesIO(get(stack["s3"], f"runs/one/{row['overlay_key']}")))
        assert png.size == tuple(rec["image_sizes"]["overlay"][::-1]) and png.size[1] == 260
        with np.load(io.BytesIO(get(stack["s3"], f"runs/one/{row['cam_key']}"))) as npz:
            assert npz["cams"].shape == (rec["n_windows"], 1, 7, 7)
        assert rec["source_etag"] and rec["run_id"]
    summary = json.loads(get(stack["s3"], "runs/one/summary.json"))
    assert summary["by_status"] == {"ok": len(GOOD), "failed": len(BAD)}
    assert summary["model"]["weights_kind"] == "checkpoint"
    status = echocam(stack["env"], "status", OUTPUT, "--json")
    state = json.loads(status.stdout)
    assert state["finished"] and state["ok"] == len(GOOD) and state["failed"] == len(BAD)


def test_resume_change_force_and_parameter_change(stack):
    before = {r["source_key"]: r["finished_at"] for r in manifest(stack["s3"])}
    assert produce(stack)[0] == 0  # everything is done
    # change one source object: only that one is redone
    changed = "site a/spinetail_44k.wav"
    y = chirp(3.0, 22050)
    stack["s3"].put_object(
        Bucket="field-audio", Key=f"survey 2019/{changed}", Body=wav_bytes(y, 22050)
    )
    assert produce(stack)[0] == 1
    after = {r["source_key"]: r["finished_at"] for r in manifest(stack["s3"])}
    assert [k for k in after if after[k] != before[k]] == [changed]
    # --force redoes all; a parameter change gives a new fingerprint and redoes all
    assert produce(stack, "--force")[0] == len(GOOD) + len(BAD)
    fp = {r["fingerprint"] for r in manifest(stack["s3"])}
    assert produce(stack, "--top-k", "2")[0] == len(GOOD) + len(BAD)
    fp2 = {r["fingerprint"] for r in manifest(stack["s3"])}
    assert len(fp) == len(fp2) == 1 and fp != fp2


def test_local_mode_writes_the_same_records(stack):
    """`echocam run` over the same bucket gives the records the workers gave (but timings)."""
    produce(stack, "--top-k", "2")  # current state of runs/one: top-k 2
    proc = echocam(
        stack["env"],
        "run",
        INPUT,
        "--out",
        "s3://cams-out/runs/local",
        "--top-k",
        "2",
        "--batch-size",
        "8",
        "--threads",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    volatile = {"timings_s", "finished_at", "run_id"}
    dist = {r["source_key"]: r for r in manifest(stack["s3"])}
    local = {r["source_key"]: r for r in manifest(stack["s3"], "runs/local")}
    assert dist.keys() == local.keys()
    for key, row in dist.items():
        a = json.loads(get(stack["s3"], f"runs/one/{row['record_key']}"))
        b = json.loads(get(stack["s3"], f"runs/local/{row['record_key']}"))
        assert {k: v for k, v in a.items() if k not in volatile} == {
            k: v for k, v in b.items() if k not in volatile
        }, key
        if row["status"] == "ok":
            assert get(stack["s3"], f"runs/one/{row['overlay_key']}") == get(
                stack["s3"], f"runs/local/{row['overlay_key']}"
            )


def test_only_json_messages_and_no_credentials_in_outputs(stack):
    secret = stack["env"]["AWS_SECRET_ACCESS_KEY"]
    key_id = stack["env"]["AWS_ACCESS_KEY_ID"]
    for obj in stack["s3"].list_objects_v2(Bucket="cams-out", Prefix="runs/one")["Contents"]:
        if obj["Key"].endswith((".json", ".jsonl")):
            body = get(stack["s3"], obj["Key"]).decode()
            assert secret not in body and key_id not in body
    log = stack["worker"].log_path.read_text(errors="replace")
    assert secret not in log


def test_bad_input_corpus_gives_one_record_each_with_stable_codes(stack):
    """Every kind of bad, odd and valid input: a record each; the worker never dies."""
    client = stack["s3"]
    for key, data, _ in corpus():
        client.put_object(Bucket="field-audio", Key=f"corpus/{key}", Body=data)
    for key, data in CORPUS_SKIPPED:
        client.put_object(Bucket="field-audio", Key=f"corpus/{key}", Body=data)
    caps = ["--max-duration-s", str(MAX_DURATION_S), "--max-bytes", str(MAX_BYTES)]
    enqueued, _ = produce(
        stack, *caps, source="s3://field-audio/corpus", out="s3://cams-out/runs/corpus"
    )
    assert enqueued == len(corpus())
    rows = {r["source_key"]: r for r in manifest(client, "runs/corpus")}
    assert len(rows) == len(corpus())
    for key, _, expected in corpus():
        got = rows[key]["status"] if expected == "ok" else rows[key]["error_code"]
        assert got == expected, (key, rows[key])
        if expected != "ok":
            assert rows[key]["error_message"]
    assert stack["worker"].proc.poll() is None  # still alive
    # nothing retries forever: a second produce finds everything current
    assert (
        produce(stack, *caps, source="s3://field-audio/corpus", out="s3://cams-out/runs/corpus")[0]
        == 0
    )


def test_pickled_message_is_rejected_not_deserialised(stack, tmp_path):
    from celery import Celery

    marker = tmp_path / "unpickled"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    app = Celery("attacker", broker=stack["redis"].url)
    app.conf.task_serializer = "pickle"
    app.send_task("echocam.process", args=[Exploit()], queue="echocam-test", serializer="pickle")
    deadline = time.monotonic() + 60
    while b"Refusing to deserialize" not in stack["worker"].log_path.read_bytes():
        assert time.monotonic() < deadline, stack["worker"].log_tail()
        time.sleep(0.2)
    assert not marker.exists()
    assert stack["worker"].proc.poll() is None
    _, out = produce(stack)  # the worker still serves the queue: the run finishes
    assert " 0 remaining" in out
