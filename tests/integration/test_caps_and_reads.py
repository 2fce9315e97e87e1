"""The caps (``--max-bytes``, ``--max-duration-s``) and what is read to decide: an object or file
above a cap is refused before its bytes are read (an S3 body, a local file never opened, a WAV
from its header), a local listing hashes a large file in constant memory, and the local done
index is listed without reading its segments.

Real stores (a directory, and SeaweedFS for S3), real recordings from ``samples/``; an S3 body
left unread shows as a process's peak memory that does not grow, local reads by an audit hook
that notes every open.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from echocam.bucket.keys import output_dir
from echocam.bucket.storage import LocalStore, S3Store, md5_etag, read_json
from echocam.errors import TooLarge, TooLong
from echocam.settings import Params
from echocam.signal import audio
from tests.helpers import ROOT, SAMPLES, explain_store, wav_bytes

CLIPS = ["S4A03895_20190522_053000.wav", "S4A03895_20190522_060000.wav"]  # 10 s each, 22 kHz
BUCKET = "caps"


@pytest.fixture(scope="module")
def s3(seaweed):
    """SeaweedFS with the module's bucket."""
    seaweed.create_bucket(BUCKET)
    return seaweed


def test_an_s3_object_above_max_bytes_is_refused(s3, request, tmp_path, species_model):
    big = (SAMPLES / CLIPS[0]).read_bytes()  # 440 044 bytes
    y, sr = sf.read(SAMPLES / CLIPS[1], dtype="float32")
    small = wav_bytes(y[: 2 * sr], sr)  # 2 s of the other recording: 88 244 bytes
    prefix = request.node.name
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/big.wav", Body=big)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/small.wav", Body=small)
    src = S3Store(f"s3://{BUCKET}/{prefix}", client)
    from echocam.explain.model import load_model

    model = load_model("random")
    _, outcomes = explain_store(
        src, LocalStore(tmp_path / "out"), model, run_id="c", max_bytes=200_000
    )
    assert {o.key: o.error_code for o in outcomes} == {"big.wav": "too_large", "small.wav": None}


def test_an_s3_object_above_max_bytes_is_refused_without_reading_its_body(s3, request):
    """A 64-MB object refused at a 1-MB cap, in a fresh process: its peak memory does not grow;
    the same object read (the control) grows it by at least its size."""
    key = f"{request.node.name}/big.bin"
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=os.urandom(64 << 20))
    script = f"""
from echocam.bucket.storage import S3Store, s3_client
from echocam.errors import TooLarge
store = S3Store("s3://{BUCKET}", s3_client(endpoint_url="{s3.endpoint_url}", region="us-east-1"))
store.put("warm.bin", b"x"); store.get("warm.bin")  # the client's own buffers, before measuring
def status(name):  # kB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(name + ":"))
def growth(read):  # MB the peak rose above the memory before ``read``
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the memory now
    before = status("VmRSS")
    try:
        data = read()
    except TooLarge:
        data = None
    return (status("VmHWM") - before) >> 10, data
refused, none = growth(lambda: store.get("{key}", max_bytes=1 << 20))
read, (data, _) = growth(lambda: store.get("{key}"))
print(refused, read, len(data) >> 20, none)
"""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key,
           "AWS_SECRET_ACCESS_KEY": s3.secret_key}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-2000:]
    refused, read, size, none = proc.stdout.split()
    assert none == "None"  # refused: TooLarge
    assert int(size) == 64 and int(read) >= 64  # the measure sees a body that is read
    assert int(refused) < 8, proc.stdout  # a refused body is not


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
