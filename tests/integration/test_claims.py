"""Claims of the docs checked where they happen: write order, conditional creates, Celery settings,
``--classes``, the caps, ``--force``, random-weights flags and the Parquet manifest.

Real stores (a directory, and SeaweedFS for S3), real recordings from ``samples/``, the real CLI.
The stores are wrapped in small classes that delegate to them and note what was done.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from devtools.services import SeaweedS3
from echocam.bucket.chunking import chunked
from echocam.bucket.keys import output_dir
from echocam.bucket.protocol import Redo
from echocam.bucket.storage import LocalStore, S3Store, md5_etag, read_json
from echocam.errors import TooLarge, TooLong
from echocam.explain.pipeline import Explainer
from echocam.run.runner import run_chunks
from echocam.settings import Params
from echocam.signal import audio
from tests.helpers import ROOT, SPECIES, wav_bytes

SAMPLES = ROOT / "samples"
CLIPS = ["S4A03895_20190522_053000.wav", "S4A03895_20190522_060000.wav"]  # 10 s each, 22 kHz
BUCKET = "claims"
_unique = itertools.count()


@pytest.fixture(scope="module")
def seaweed():
    with SeaweedS3() as s3:
        s3.create_bucket(BUCKET)
        yield s3


def make_store(kind: str, request, tmp_path: Path):
    """A fresh, empty store of ``kind``: a directory, or a prefix of a SeaweedFS bucket."""
    if kind == "local":
        return LocalStore(tmp_path / f"store{next(_unique)}")
    s3 = request.getfixturevalue("seaweed")
    return S3Store(f"s3://{BUCKET}/store{next(_unique)}", s3.client())


@pytest.fixture()
def sources(tmp_path) -> LocalStore:
    """Two real recordings and two bad inputs (a failed record has no outputs)."""
    src = tmp_path / "in"
    (src / "site").mkdir(parents=True)
    for name in CLIPS:
        shutil.copy(SAMPLES / name, src / "site" / name)
    (src / "bad").mkdir()
    (src / "bad" / "empty.wav").write_bytes(b"")
    (src / "bad" / "text.wav").write_bytes(b"not audio at all\n" * 20)
    return LocalStore(src)


class RecordingStore:
    """A real store that notes each put as it starts and as it ends; everything else passes."""

    def __init__(self, inner):
        self.inner, self.uri = inner, inner.uri
        self.events: list[tuple] = []
        self._lock = threading.Lock()

    def _note(self, *event) -> None:
        with self._lock:
            self.events.append(event)

    def list(self, **kw):
        return self.inner.list(**kw)

    def keys(self, **kw):
        return self.inner.keys(**kw)

    def get(self, key, **kw):
        return self.inner.get(key, **kw)

    def put(self, key, data, *, if_absent=False):
        self._note("start", key, if_absent)
        ok = self.inner.put(key, data, if_absent=if_absent)
        self._note("end", key, if_absent, ok)
        return ok

    def put_file(self, key, path):
        self._note("start", key, False)
        self.inner.put_file(key, path)
        self._note("end", key, False, True)

    def delete(self, keys):
        self.inner.delete(keys)


def explain_into(src, dst, model, *, run_id: str, force: bool = False, **params):
    items = list(src.list(suffixes=(".wav",)))
    with ThreadPoolExecutor(4) as pool:
        ex = Explainer(model, Params(**params), device="cpu", batch_size=8, pool=pool)
        outcomes = run_chunks(
            chunked(items, 2),
            src=src,
            dst=dst,
            explainer=ex,
            run_id=run_id,
            redo=Redo(force=force),
            pool=pool,
        )
    return items, outcomes


def assert_outputs_then_record(store: RecordingStore, keys: list[str], *, if_absent: bool):
    """For each source: every output put ends before its record's put starts; one record put,
    conditional (``if_absent``) exactly when asked; the outputs put are those the record lists."""
    events = list(enumerate(store.events))
    for key in keys:
        d = output_dir(key) + "/"
        rec_key = d + "record.json"
        record = read_json(store.inner, rec_key)
        listed = {
            k for v in record["outputs"].values() for k in (v if isinstance(v, list) else [v])
        }
        mine = [(i, e) for i, e in events if e[1].startswith(d)]
        rec_starts = [(i, e) for i, e in mine if e[1] == rec_key and e[0] == "start"]
        rec_ends = [e for _, e in mine if e[1] == rec_key and e[0] == "end"]
        assert len(rec_starts) == 1 and len(rec_ends) == 1, (key, mine)
        (rec_at, (_, _, cond)), (_, _, _, created) = rec_starts[0], rec_ends[0]
        assert cond is if_absent and created, (key, rec_starts, rec_ends)
        output_ends = {e[1]: i for i, e in mine if e[0] == "end" and e[1] != rec_key}
        assert set(output_ends) == listed, key
        late = [k for k, i in output_ends.items() if i > rec_at]
        assert not late, f"{key}: {late} written after its record began"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_outputs_are_put_before_the_record_which_is_created_if_absent(
    kind, request, tmp_path, sources, species_model
):
    dst = RecordingStore(make_store(kind, request, tmp_path))
    items, outcomes = explain_into(sources, dst, species_model, run_id="one", save_inputs=True)
    keys = [it.key for it in items]
    assert sorted(o.status for o in outcomes) == ["failed", "failed", "ok", "ok"]
    assert_outputs_then_record(dst, keys, if_absent=True)  # no record existed: create only
    # A forced rerun replaces the records (unconditional put), outputs still first.
    dst.events.clear()
    explain_into(sources, dst, species_model, run_id="two", force=True, save_inputs=True)
    assert_outputs_then_record(dst, keys, if_absent=False)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_second_create_of_a_key_is_refused_and_keeps_the_first_bytes(kind, request, tmp_path):
    store = make_store(kind, request, tmp_path)
    assert store.put("a/record.json", b"first", if_absent=True) is True
    assert store.put("a/record.json", b"second", if_absent=True) is False
    assert store.get("a/record.json")[0] == b"first"
    # Creates racing for one key: exactly one wins, and its bytes are the ones kept.
    with ThreadPoolExecutor(8) as pool:
        won = list(
            pool.map(
                lambda i: store.put("b/record.json", f"writer {i}".encode(), if_absent=True),
                range(8),
            )
        )
    assert won.count(True) == 1
    assert store.get("b/record.json")[0] == f"writer {won.index(True)}".encode()
    # A plain put does overwrite: the refusals above are the condition's doing.
    assert store.put("a/record.json", b"third") is True
    assert store.get("a/record.json")[0] == b"third"


_CONF = """
import json
from worker.app import app
c = app.conf
print(json.dumps({k: c[k] for k in (
    "task_acks_late", "task_reject_on_worker_lost", "worker_prefetch_multiplier",
    "accept_content", "task_serializer", "result_serializer", "event_serializer",
    "task_soft_time_limit", "task_time_limit", "broker_transport_options")}))
"""


def celery_conf(**env: str) -> subprocess.CompletedProcess:
    """Import ``worker.app`` in a fresh interpreter with only these ``ECHOCAM_*`` variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ECHOCAM_")}
    return subprocess.run(
        [sys.executable, "-c", _CONF],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "env, limits",
    [
        ({}, (600, 720, 7200)),  # docs/design/guarantees.md: 10 min soft, 12 min hard, 2 h
        (
            {
                "ECHOCAM_TASK_SOFT_TIME_LIMIT": "50",
                "ECHOCAM_TASK_TIME_LIMIT": "70",
                "ECHOCAM_VISIBILITY_TIMEOUT": "90",
            },
            (50, 70, 90),
        ),
    ],
)
def test_the_configured_celery_app_has_the_delivery_settings_the_readme_lists(env, limits):
    proc = celery_conf(**env)
    assert proc.returncode == 0, proc.stderr
    conf = json.loads(proc.stdout)
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["event_serializer"] == "json"
    soft, hard = conf["task_soft_time_limit"], conf["task_time_limit"]
    visibility = conf["broker_transport_options"]["visibility_timeout"]
    assert (soft, hard, visibility) == limits
    assert visibility > hard > soft > 0


@pytest.mark.parametrize(
    "soft, hard, visibility",
    [(720, 600, 7200), (600, 600, 7200), (600, 7200, 7200), (600, 8000, 7200), (0, 720, 7200)],
)
def test_settings_refuse_time_limits_that_would_redeliver_a_running_task(soft, hard, visibility):
    from echocam.settings import Settings

    with pytest.raises(ValueError, match="task_soft_time_limit < task_time_limit"):
        Settings(task_soft_time_limit=soft, task_time_limit=hard, visibility_timeout=visibility)
    Settings(task_soft_time_limit=1, task_time_limit=2, visibility_timeout=3)  # consistent: fine


def test_a_worker_app_with_a_visibility_timeout_below_the_time_limit_does_not_import():
    proc = celery_conf(ECHOCAM_TASK_TIME_LIMIT="900", ECHOCAM_VISIBILITY_TIMEOUT="800")
    assert proc.returncode != 0 and "visibility_timeout" in proc.stderr


# -- caps: checked before the download, and from the header ------------------------------------


class CountingBody:
    """A real response body that counts the bytes read from it."""

    def __init__(self, body, counts: Counter, key: str):
        self.body, self.counts, self.key = body, counts, key

    def read(self, *args):
        data = self.body.read(*args)
        self.counts[self.key] += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.body, name)


class CountingClient:
    """A real boto3 client whose object bodies count what is read from them."""

    def __init__(self, client):
        self.client, self.counts = client, Counter()

    def get_object(self, **kw):
        response = self.client.get_object(**kw)
        response["Body"] = CountingBody(response["Body"], self.counts, kw["Key"])
        return response

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_an_s3_object_above_max_bytes_is_refused_without_reading_its_body(
    seaweed, tmp_path, species_model
):
    big = (SAMPLES / CLIPS[0]).read_bytes()  # 440 044 bytes
    y, sr = sf.read(SAMPLES / CLIPS[1], dtype="float32")
    small = wav_bytes(y[: 2 * sr], sr)  # 2 s of the other recording: 88 244 bytes
    prefix = f"caps{next(_unique)}"
    client = seaweed.client()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/big.wav", Body=big)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/small.wav", Body=small)
    counting = CountingClient(client)
    src = S3Store(f"s3://{BUCKET}/{prefix}", counting)
    from echocam.explain.model import load_model

    model = load_model("random")
    _, outcomes = explain_into(
        src, LocalStore(tmp_path / "out"), model, run_id="c", max_bytes=200_000
    )
    assert {o.key: o.error_code for o in outcomes} == {"big.wav": "too_large", "small.wav": None}
    assert counting.counts[f"{prefix}/small.wav"] == len(small)  # the counter does count
    assert counting.counts[f"{prefix}/big.wav"] == 0


def test_a_local_file_above_max_bytes_is_refused_without_opening_it(tmp_path):
    (tmp_path / "big.wav").write_bytes((SAMPLES / CLIPS[0]).read_bytes())
    (tmp_path / "small.wav").write_bytes(b"RIFF" + bytes(100))
    store = LocalStore(tmp_path)
    opened: list[str] = []
    with audit_opens(opened):
        with pytest.raises(TooLarge, match="above the cap of 200000"):
            store.get("big.wav", max_bytes=200_000)
        data, _ = store.get("small.wav", max_bytes=200_000)
    assert len(data) == 104
    assert str(tmp_path / "small.wav") in opened  # the hook does see reads
    assert str(tmp_path / "big.wav") not in opened


def test_a_local_listing_hashes_a_large_file_in_constant_memory(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, 64 * 2**20, dtype=np.uint8).tobytes()
    (tmp_path / "big.wav").write_bytes(big)
    tracemalloc.start()
    try:
        [info] = LocalStore(tmp_path).list()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.etag == md5_etag(big)  # the ETag an S3 upload of the same bytes gets
    assert peak < 4 * 2**20  # the file is 64 MiB


def test_the_local_done_index_is_listed_without_reading_its_segments(tmp_path):
    """Local mode asks whether the segments changed every few decisions: listing them must not
    read them (an md5 per segment per ask, megabytes each at scale)."""
    from echocam.bucket import index

    store = LocalStore(tmp_path)
    seg = tmp_path / index.segment_key()
    seg.parent.mkdir(parents=True)
    marker = index.Marker("none", "f" * 64, "0" * 16, "ok")
    index.write_segment(seg, ((f"rec_{i:04d}.wav", marker) for i in range(100)))
    (tmp_path / "_index" / "a.wav!").mkdir()
    (tmp_path / "_index" / "a.wav!" / marker.name).write_bytes(b"")
    assert sorted(store.keys(under="_index/")) == sorted(o.key for o in store.list(under="_index/"))
    view = index.View(store)
    opened: list[str] = []
    with audit_opens(opened):
        assert view.unchanged()
        assert [g.source for g in index.groups(store)] == ["a.wav"]
    assert str(seg) not in opened


def test_local_mode_never_opens_a_file_above_max_bytes_nor_a_file_it_does_not_explain(
    tmp_path, species_checkpoint
):
    """A recording above ``max_bytes`` fails ``too_large`` without being opened, on the first
    run and on the re-run that skips it; ``--dry-run`` opens no file of another extension (their
    ETags come from their size and modification time); a rewritten big file is tried again."""
    from echocam.run.local import dry_run, run_local
    from echocam.settings import Settings

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(SAMPLES / CLIPS[0], src / "big.wav")
    shutil.copy(SAMPLES / CLIPS[1], src / "small.wav")
    (src / "notes.txt").write_text("not audio")
    big, notes = str(src / "big.wav"), str(src / "notes.txt")
    cap = (src / "big.wav").stat().st_size - 1
    (src / "small.wav").write_bytes((src / "small.wav").read_bytes()[:cap])  # under the cap
    params = Params(max_bytes=cap)
    settings = Settings(weights=str(species_checkpoint), threads=1, io_threads=2)
    opened: list[str] = []
    with audit_opens(opened):
        first = run_local(str(src), str(out), params=params, settings=settings, progress=False)
        again = list(dry_run(str(src), str(out), params=params, settings=settings))
        second = run_local(str(src), str(out), params=params, settings=settings, progress=False)
    assert first["by_error_code"] == {"too_large": 1} and first["by_status"]["ok"] == 1, first
    reasons = {d.item.key: d.reason for d in again}
    assert reasons == {"big.wav": "done (current record)", "small.wav": "done (current record)",
                       "notes.txt": "extension"}, reasons  # fmt: skip
    assert second["recordings"] == 2, second
    assert big not in opened and notes not in opened
    assert str(src / "small.wav") in opened  # the hook does see the files that are read
    record = read_json(LocalStore(out), output_dir("big.wav") + "/record.json")
    assert record["error_code"] == "too_large" and record["source_etag"].startswith('"unread-')
    os.utime(src / "big.wav", ns=(1, 1))  # rewritten: a new modification time
    rerun = dry_run(str(src), str(out), params=params, settings=settings)
    decisions = {d.item.key: d.reason for d in rerun}
    assert decisions["big.wav"] is None  # to do again, and still unread when it runs


_audit_sinks: list[list[str]] = []


def _audit(event: str, args) -> None:
    if event == "open" and _audit_sinks and isinstance(args[0], str | os.PathLike):
        _audit_sinks[-1].append(os.fspath(args[0]))


@contextlib.contextmanager
def audit_opens(sink: list[str]):
    """Note the path of every file this process opens (an audit hook: it stays installed, but
    notes nothing outside this block)."""
    if _audit not in _installed_hooks:
        sys.addaudithook(_audit)
        _installed_hooks.append(_audit)
    _audit_sinks.append(sink)
    try:
        yield sink
    finally:
        _audit_sinks.pop()


_installed_hooks: list = []


def test_a_too_long_wav_is_refused_from_its_header_before_its_samples_are_decoded():
    data = (SAMPLES / CLIPS[0]).read_bytes()  # 10 s at 22 050 Hz, 16-bit mono
    decoded_bytes = 10 * 22050 * 4  # what decoding it to float32 would allocate
    tracemalloc.start()
    try:
        with pytest.raises(TooLong, match="duration 10.0 s exceeds"):
            audio.decode(
                data, sample_rate=22050, min_samples=2048, max_duration_s=5, max_bytes=10**9
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < decoded_bytes / 20, peak


def test_a_redelivered_task_rewrites_byte_identical_outputs(tmp_path, sources, species_checkpoint):
    from echocam.explain.model import load_model

    dst = RecordingStore(LocalStore(tmp_path / "out"))
    items, outcomes = explain_into(
        sources, dst, load_model(str(species_checkpoint)), run_id="r", top_k=2
    )
    names = ("cam.npz", "spectrogram.png", "overlay.jpg")
    ok = [o.key for o in outcomes if o.status == "ok"]
    assert len(ok) == 2
    first = {f"{k}/{n}": (dst.inner.root / k / n).read_bytes() for k in ok for n in names}
    # The worker died after the outputs, before the records: the task comes back to another
    # process (a freshly loaded model), finds no record, and writes everything again.
    for it in items:
        (dst.inner.root / output_dir(it.key) / "record.json").unlink()
    dst.events.clear()
    explain_into(sources, dst, load_model(str(species_checkpoint)), run_id="r", top_k=2)
    assert set(first) <= {e[1] for e in dst.events if e[0] == "end"}  # really rewritten
    again = {key: (dst.inner.root / key).read_bytes() for key in first}
    assert [k for k in first if again[k] != first[k]] == []


# -- the CLI's local mode: --classes, --force, random weights, the manifest files --------------


def cli(*args: str) -> subprocess.CompletedProcess:
    """``echocam ARGS``: the console script's ``main`` (its return value is the exit code), run
    in this process to spare an interpreter and torch import per call; no ``ECHOCAM_*``
    variables from this environment, and torch's thread count restored afterwards."""
    from echocam_cli import main

    out, err = io.StringIO(), io.StringIO()
    ours = [k for k in os.environ if k.startswith("ECHOCAM_")]
    threads = torch.get_num_threads()
    with mock.patch.dict(os.environ), redirect_stdout(out), redirect_stderr(err):
        for k in ours:
            del os.environ[k]
        try:
            code = main(list(args))
        finally:
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["echocam", *args], code, out.getvalue(), err.getvalue())


def test_classes_explains_the_named_classes_in_the_order_given(tmp_path, species_checkpoint):
    out = tmp_path / "out"
    names = f"{SPECIES[2]},{SPECIES[0]}"  # ids 2 and 0: neither sorted nor the top-k
    proc = cli(
        "run", str(SAMPLES / CLIPS[0]), "--out", str(out), "--weights", str(species_checkpoint),
        "--classes", names, "--threads", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((out / CLIPS[0] / "record.json").read_text())
    assert rec["status"] == "ok" and rec["n_windows"] == 2
    with np.load(out / rec["outputs"]["cam"]) as npz:
        assert npz["class_ids"].tolist() == [[2, 0], [2, 0]]
        assert npz["cams"].shape == (2, 2, 7, 7)
        assert npz["class_names"].tolist() == [[SPECIES[2], SPECIES[0]]] * 2
    for window in rec["windows"]:
        assert [(c["class_id"], c["class_name"]) for c in window["explained"]] == [
            (2, SPECIES[2]),
            (0, SPECIES[0]),
        ]
    assert rec["image_sizes"]["overlay"][0] == 2 * 260  # one band per named class
    assert rec["model"]["weights_kind"] == "checkpoint" and rec["model"]["random_weights"] is False


def test_an_unknown_class_name_fails_with_a_clear_message_and_exit_code_2(
    tmp_path, species_checkpoint
):
    out = tmp_path / "out"
    proc = cli(
        "run", str(SAMPLES / CLIPS[0]), "--out", str(out), "--weights", str(species_checkpoint),
        "--classes", f"{SPECIES[1]},Dodo", "--threads", "2",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "unknown classes ['Dodo']" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(out.rglob("record.json"))


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """``echocam run --weights random`` over two real recordings and two bad inputs."""
    src = tmp_path_factory.mktemp("random-in")
    (src / "site").mkdir()
    for name in CLIPS:
        shutil.copy(SAMPLES / name, src / "site" / name)
    (src / "bad").mkdir()
    (src / "bad" / "empty.wav").write_bytes(b"")
    (src / "bad" / "silent.wav").write_bytes(wav_bytes(np.zeros(22050, np.float32), 22050))
    out = tmp_path_factory.mktemp("random-out")
    args = ["--weights", "random", "--weights-seed", "7", "--top-k", "2", "--chunk-size", "2"]
    args += ["--batch-size", "8", "--threads", "2"]
    proc = cli("run", str(src), "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    return src, out, args


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_random_weights_are_flagged_in_every_output_that_readme_lists(random_run):
    _, out, _ = random_run
    run = json.loads((out / "run.json").read_text())
    model = run["model"]
    assert model["weights"] == "random" and model["weights_kind"] == "random"
    assert model["random_weights"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == model
    rows = jsonl(out / "manifest.jsonl")
    assert len(rows) == 4
    assert {(r["weights_kind"], r["model_sha256"]) for r in rows} == {("random", model["sha256"])}
    parquet = pq.read_table(out / "manifest.parquet").to_pydict()
    assert set(parquet["weights_kind"]) == {"random"}
    for row in rows:  # ok and failed records alike
        rec = json.loads((out / row["record_key"]).read_text())
        assert rec["model"] == model, row["source_key"]
        if row["status"] == "ok":
            # docs/reference/outputs.md lists model_sha256 in cam.npz, not weights_kind: the sha
            # is the flag there
            with np.load(out / row["cam_key"]) as npz:
                assert str(npz["model_sha256"]) == model["sha256"]
    assert sorted(r["status"] for r in rows) == ["failed", "failed", "ok", "ok"]


#: The manifest's columns as docs/reference/outputs.md lists them (generated from
#: echocam.bucket.manifest.SCHEMA), with their types.
MANIFEST_COLUMNS = {
    "source_key": pa.string(),
    "status": pa.string(),
    "error_code": pa.string(),
    "error_message": pa.string(),
    "source_size": pa.int64(),
    "source_etag": pa.string(),
    "duration_s": pa.float64(),
    "n_windows": pa.int64(),
    "top_class_id": pa.int64(),
    "top_class_name": pa.string(),
    "top_probability": pa.float64(),
    "top_predictions": pa.list_(
        pa.struct(
            [("class_id", pa.int64()), ("class_name", pa.string()), ("probability", pa.float64())]
        )
    ),
    "record_key": pa.string(),
    "spectrogram_key": pa.string(),
    "overlay_key": pa.string(),
    "cam_key": pa.string(),
    "fingerprint": pa.string(),
    "model_sha256": pa.string(),
    "weights_kind": pa.string(),
    "finished_at": pa.string(),
}


def test_manifest_parquet_holds_the_jsonl_rows_with_the_schema_types(random_run):
    _, out, _ = random_run
    rows = jsonl(out / "manifest.jsonl")
    table = pq.read_table(out / "manifest.parquet")
    assert [(f.name, f.type) for f in table.schema] == list(MANIFEST_COLUMNS.items())
    assert [list(r) for r in rows] == [list(MANIFEST_COLUMNS)] * len(rows)  # JSONL: same keys
    assert table.to_pylist() == rows  # every column of every row, in order
    # both kinds of row are in there: values and nulls
    ok = next(r for r in rows if r["status"] == "ok")
    failed = next(r for r in rows if r["status"] == "failed")
    assert ok["top_predictions"] and ok["duration_s"] > 0 and ok["error_code"] is None
    assert failed["cam_key"] is None and failed["error_code"] in ("empty", "silent")


def test_local_force_redoes_every_recording_and_without_it_nothing_is_rewritten(
    random_run, tmp_path
):
    src, done, args = random_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    records = sorted(out.rglob("record.json"))
    assert len(records) == 4
    before = {p: p.read_bytes() for p in records}
    old_ids = {json.loads(b)["run_id"] for b in before.values()}

    proc = cli("run", str(src), "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    assert {p: p.read_bytes() for p in records} == before  # nothing rewritten

    proc = cli("run", str(src), "--out", str(out), *args, "--force")
    assert proc.returncode == 0, proc.stderr
    assert sorted(out.rglob("record.json")) == records
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert run_id not in old_ids
    after = [json.loads(p.read_text()) for p in records]
    assert [r["run_id"] for r in after] == [run_id] * 4  # every recording redone, failed ones too
    assert {r["source_key"]: r["status"] for r in after} == {
        json.loads(b)["source_key"]: json.loads(b)["status"] for b in before.values()
    }
