"""The distributed path end to end: real Redis, a real S3 server, real worker processes.

One stack for the module (its worker on the module's own queue); each test writes under its
own output prefix, and a test that changes inputs works on its own copy of them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import time
import zipfile
import zlib
from urllib.parse import quote, quote_plus

import numpy as np
import pytest
from PIL import Image

from devtools.services import RedisServer, SeaweedS3
from devtools.stack import echocam
from tests.corpus import MAX_BYTES, MAX_DURATION_S, corpus
from tests.corpus import SKIPPED as CORPUS_SKIPPED
from tests.helpers import (
    SPECIES,
    available,
    chirp,
    marks,
    own_queue,
    recording,
    start_worker,
    wav_bytes,
)

pytestmark = pytest.mark.slow

# Without ../shared, those samples/ holds (spinetail_44k.wav): the module still runs end to end.
GOOD = available(
    [
        "spinetail_44k.wav",
        "S4A03895_20190522_000000.wav",
        "S4A03895_20190522_050000.wav",
        "S4A03895_20190522_070000.wav",
        "XC563936_soundscape_48k.mp3",
    ]
)
assert GOOD, "no real recording in ../shared nor samples/"
BAD = {
    "bad/empty.wav": (b"", "empty"),
    "bad/random.mp3": (np.random.default_rng(5).bytes(4000), "undecodable"),
    "bad/silent.flac": (wav_bytes(np.zeros(22050, np.float32), 22050, fmt="FLAC"), "silent"),
}
SKIPPED = {"site a/notes.txt": b"field notes: not audio"}
INPUT = "s3://field-audio/survey 2019"  # read only: a test that changes inputs copies them
COMMON = ["--task-size", "2", "--page-size", "2"]


@pytest.fixture(scope="module")
@marks("redis", "s3", "worker")
def stack(tmp_path_factory, species_checkpoint, request):
    """Redis + SeaweedFS + one worker; input and output in different buckets.  Once every test
    of the module is done, no secret is in anything they wrote or printed."""
    d = tmp_path_factory.mktemp("stack")
    with RedisServer(password="redis pw/with:odd@chars") as redis_srv, SeaweedS3() as s3:
        s3.create_bucket("field-audio")
        s3.create_bucket("cams-out")
        client = s3.client()
        for i, name in enumerate(GOOD):
            key = f"survey 2019/site {'ab'[i % 2]}/{name}"
            client.put_object(Bucket="field-audio", Key=key, Body=recording(name).read_bytes())
        for key, data in {**{k: v for k, (v, _) in BAD.items()}, **SKIPPED}.items():
            client.put_object(Bucket="field-audio", Key=f"survey 2019/{key}", Body=data)
        env = {
            **os.environ,
            **s3.env(),
            "ECHOCAM_BROKER_URL": redis_srv.url,
            "ECHOCAM_QUEUE": own_queue(request),
            "ECHOCAM_WEIGHTS": str(species_checkpoint),
            "ECHOCAM_THREADS": "1",
            "ECHOCAM_BATCH_SIZE": "8",
        }
        worker = start_worker(request, env, name="w1", log_dir=d)
        # every CLI run's stdout and stderr, searched for credentials
        stack = {"env": env, "s3": client, "redis": redis_srv, "worker": worker, "cli_output": []}
        try:
            yield stack
        finally:
            worker.stop()  # before its broker goes
        problems = credentials_anywhere(stack)
        assert not problems, "\n".join(problems)


def cli(stack, *args: str):
    """``echocam *args`` with the stack's environment; its output kept for the credentials test."""
    proc = echocam(stack["env"], *args)
    stack["cli_output"].append(f"$ echocam {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    return proc


def produce(stack, *args: str, out: str, source: str = INPUT) -> tuple[int, str]:
    proc = cli(
        stack,
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


def copy_inputs(stack, prefix: str) -> str:
    """A copy of the module's inputs under ``prefix`` of the input bucket: its URI."""
    client, old = stack["s3"], "survey 2019/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="field-audio", Prefix=old):
        for obj in page["Contents"]:
            client.copy_object(
                Bucket="field-audio",
                Key=f"{prefix}/{obj['Key'][len(old) :]}",
                CopySource={"Bucket": "field-audio", "Key": obj["Key"]},
            )
    return f"s3://field-audio/{prefix}"


def manifest(client, prefix: str):
    body = client.get_object(Bucket="cams-out", Key=f"{prefix}/manifest.jsonl")["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines()]


def get(client, key: str) -> bytes:
    return client.get_object(Bucket="cams-out", Key=key)["Body"].read()


def test_end_to_end_every_input_once_with_outputs_or_error_code(stack):
    enqueued, out = produce(stack, out="s3://cams-out/runs/one")
    assert enqueued == len(GOOD) + len(BAD)
    rows = manifest(stack["s3"], "runs/one")
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
    # the model's class names once per run, as the workers reported them
    assert json.loads(get(stack["s3"], "runs/one/run.json"))["class_names"] == SPECIES
    assert summary["model"]["weights_kind"] == "checkpoint"
    status = cli(stack, "status", "s3://cams-out/runs/one", "--json")
    state = json.loads(status.stdout)
    assert state["finished"] and state["ok"] == len(GOOD) and state["failed"] == len(BAD)


def test_a_bucket_run_writes_embeddings_and_search_answers_over_them(stack):
    """The workers' chunks put embeddings shards, the last one's compaction the run's table,
    and ``echocam search s3://…`` ranks it as a brute force over the same vectors does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from echocam.bucket import embeddings

    produce(stack, out="s3://cams-out/runs/embed")
    t = pq.read_table(pa.BufferReader(get(stack["s3"], f"runs/embed/{embeddings.NAME}")))
    rows = manifest(stack["s3"], "runs/embed")
    windows = sum(r["n_windows"] or 0 for r in rows)
    assert t.num_rows == 2 * windows  # a window's row and its detection's (top-1)
    assert sorted(set(t.column("source_key").to_pylist())) == sorted(
        r["source_key"] for r in rows if r["status"] == "ok"
    )
    listed = stack["s3"].list_objects_v2(
        Bucket="cams-out", Prefix=f"runs/embed/{embeddings.SHARDS}"
    )
    assert len(listed["Contents"]) == 1  # consolidated
    det = t.filter(t.column("class_name").is_valid())
    q = embeddings.vectors(det.slice(0, 1))[0].astype(np.float64)
    q /= np.linalg.norm(q)  # as the search takes a query
    key, begin = det.column("source_key")[0].as_py(), det.column("begin_s")[0].as_py()
    name = det.column("class_name")[0].as_py()
    proc = cli(stack, "search", "s3://cams-out/runs/embed", "--like-detection",
               f"{key}@{begin!r}#{name}", "--top", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = [line.split(",")[0] for line in proc.stdout.splitlines()[1:]]
    cos = embeddings.vectors(det).astype(np.float64)[1:] @ q
    np.testing.assert_allclose([float(x) for x in got], np.sort(cos)[::-1][:3], atol=1e-6)


def test_resume_change_force_and_parameter_change(stack):
    src, out = copy_inputs(stack, "resume"), "s3://cams-out/runs/resume"
    assert produce(stack, source=src, out=out)[0] == len(GOOD) + len(BAD)
    before = {r["source_key"]: r["finished_at"] for r in manifest(stack["s3"], "runs/resume")}
    assert produce(stack, source=src, out=out)[0] == 0  # everything is done
    # change one source object: only that one is redone
    changed = "site a/spinetail_44k.wav"
    y = chirp(3.0, 22050)
    stack["s3"].put_object(Bucket="field-audio", Key=f"resume/{changed}", Body=wav_bytes(y, 22050))
    assert produce(stack, source=src, out=out)[0] == 1
    after = {r["source_key"]: r["finished_at"] for r in manifest(stack["s3"], "runs/resume")}
    assert [k for k in after if after[k] != before[k]] == [changed]
    # --force redoes all; a parameter change gives a new fingerprint and redoes all
    assert produce(stack, "--force", source=src, out=out)[0] == len(GOOD) + len(BAD)
    fp = {r["fingerprint"] for r in manifest(stack["s3"], "runs/resume")}
    assert produce(stack, "--top-k", "2", source=src, out=out)[0] == len(GOOD) + len(BAD)
    fp2 = {r["fingerprint"] for r in manifest(stack["s3"], "runs/resume")}
    assert len(fp) == len(fp2) == 1 and fp != fp2


def test_local_mode_writes_the_same_records(stack):
    """`echocam run` over the same bucket gives the records the workers gave (but timings)."""
    produce(stack, "--top-k", "2", out="s3://cams-out/runs/dist")
    proc = cli(
        stack,
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
    dist = {r["source_key"]: r for r in manifest(stack["s3"], "runs/dist")}
    local = {r["source_key"]: r for r in manifest(stack["s3"], "runs/local")}
    assert dist.keys() == local.keys()
    for key, row in dist.items():
        a = json.loads(get(stack["s3"], f"runs/dist/{row['record_key']}"))
        b = json.loads(get(stack["s3"], f"runs/local/{row['record_key']}"))
        assert {k: v for k, v in a.items() if k not in volatile} == {
            k: v for k, v in b.items() if k not in volatile
        }, key
        if row["status"] == "ok":
            assert get(stack["s3"], f"runs/dist/{row['overlay_key']}") == get(
                stack["s3"], f"runs/local/{row['overlay_key']}"
            )


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
    queue = stack["env"]["ECHOCAM_QUEUE"]
    app.send_task("echocam.process", args=[Exploit()], queue=queue, serializer="pickle")
    deadline = time.monotonic() + 60
    while b"Refusing to deserialize" not in stack["worker"].log_path.read_bytes():
        assert time.monotonic() < deadline, stack["worker"].log_tail()
        time.sleep(0.2)
    assert not marker.exists()
    assert stack["worker"].proc.poll() is None
    # the worker still serves the queue: the run finishes
    _, out = produce(stack, out="s3://cams-out/runs/pickled")
    assert " 0 remaining" in out


def secrets(stack) -> dict[str, str]:
    """Every secret the run had, in the forms it could be written: the AWS keys, and the Redis
    password as typed and URL-encoded (as the broker URL carries it, any case of hex digits)."""
    password = stack["redis"].password
    found = {
        "AWS_ACCESS_KEY_ID": stack["env"]["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": stack["env"]["AWS_SECRET_ACCESS_KEY"],
        "redis password": password,
    }
    for form in {quote(password, safe=""), quote(password), quote_plus(password)}:
        found[f"redis password as {form}"] = form
        found[f"redis password as {form.lower()}"] = re.sub(
            "%[0-9A-F]{2}", lambda m: m.group().lower(), form
        )
    assert quote(password, safe="") in stack["env"]["ECHOCAM_BROKER_URL"]
    assert len(set(found.values())) >= 5  # the password needs encoding: its forms differ
    return found


def byte_views(key: str, data: bytes) -> dict[str, bytes]:
    """An object's bytes, plus what compression hides: zip (NPZ) members, PNG image and text
    chunks, Parquet values."""
    views = {key: data}
    if data.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            views |= {f"{key}:{name}": z.read(name) for name in z.namelist()}
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        pos, idat = 8, b""
        while pos < len(data):
            length, kind = struct.unpack(">I4s", data[pos : pos + 8])
            chunk = data[pos + 8 : pos + 8 + length]
            if kind == b"IDAT":
                idat += chunk
            else:  # zTXt and iTXt text may be deflated: inflate every zlib stream in it
                for i in (i for i in range(len(chunk)) if chunk[i] == 0x78):
                    with contextlib.suppress(zlib.error):
                        views[f"{key}:{kind.decode()}@{i}"] = zlib.decompress(chunk[i:])
            pos += 12 + length
        views[f"{key}:IDAT"] = zlib.decompress(idat)
    elif data.startswith(b"PAR1"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        views[f"{key}:values"] = json.dumps(table.to_pylist(), default=str).encode()
    return views


def leaks(where: str, data: bytes, found: dict[str, str]) -> list[str]:
    """Which secrets ``data`` holds, in UTF-8, UTF-16 or UTF-32 (numpy's str arrays in NPZ)."""
    return [
        f"{name} in {where} ({encoding})"
        for name, value in found.items()
        for encoding in ("utf-8", "utf-16-le", "utf-32-le")
        if value.encode(encoding) in data
    ]


def credentials_anywhere(stack) -> list[str]:
    """Every secret of the stack found in any object of the output bucket (binary ones too),
    any CLI run's output or the worker's log."""
    found = secrets(stack)
    client, problems = stack["s3"], []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="cams-out"):
        for obj in page.get("Contents", []):
            for where, data in byte_views(obj["Key"], get(client, obj["Key"])).items():
                problems += leaks(where, data, found)
    for i, text in enumerate(stack["cli_output"]):
        problems += leaks(f"CLI output {i} ({text.splitlines()[0]})", text.encode(), found)
    problems += leaks("worker log", stack["worker"].log_path.read_bytes(), found)
    return problems


def test_no_credentials_in_any_output_log_or_cli_output(stack):
    """A run of its own (every kind of output) and whatever the module's tests wrote so far:
    every object of the output bucket, every CLI run's output and the worker's log, for every
    secret of the run.  The stack checks the same once every test is done."""
    produce(stack, out="s3://cams-out/runs/credentials")
    cli(stack, "status", "s3://cams-out/runs/credentials")
    listed = stack["s3"].list_objects_v2(Bucket="cams-out", Prefix="runs/credentials/")
    names = {o["Key"].rsplit("/", 1)[-1] for o in listed["Contents"]}
    assert names >= {
        "spectrogram.png",
        "overlay.jpg",
        "cam.npz",
        "record.json",
        "run.json",
        "manifest.jsonl",
        "manifest.parquet",
        "summary.json",
    }, names
    problems = credentials_anywhere(stack)
    assert not problems, "\n".join(problems)
