"""The `echocam` command itself: --version, honest help, and local mode (`echocam run`) as a user
runs it: a bar from the start, --dry-run, --limit and --retry-failed over a directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from tests.helpers import chirp, wav_bytes

ROOT = Path(__file__).resolve().parents[2]


def echocam(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "echocam_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def clip(i: int, seconds: float = 1.0) -> bytes:
    """A distinct chirp (its own md5)."""
    return wav_bytes(chirp(seconds, 22050, f0=500.0 + 50 * i), 22050)


def records(out: Path) -> dict[str, dict]:
    recs = (json.loads(p.read_text()) for p in out.rglob("record.json"))
    return {r["source_key"]: r for r in recs}


def test_version_is_the_installed_distribution():
    proc = echocam("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"echocam {version('echo-cam')}"


def test_worker_concurrency_help_matches_the_compose_default():
    """`worker --help` gives the processes per GPU that docker-compose.yml (and
    docs/deployment/scaling.md) use."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["worker"]["command"]
    per_gpu = re.fullmatch(
        r"\$\{WORKER_GPU_CONCURRENCY:-(\d+)\}", command[command.index("--concurrency") + 1]
    )
    assert per_gpu, command
    help_ = " ".join(echocam("worker", "--help").stdout.split())
    assert "one per GPU" not in help_
    said = re.search(r"(\d+) on a \d+-core host, as WORKER_GPU_CONCURRENCY", help_)
    assert said and said.group(1) == per_gpu.group(1), help_


@pytest.fixture
def local_args(species_checkpoint):
    return ["--weights", str(species_checkpoint), "--threads", "1", "--batch-size", "8"]


@pytest.mark.slow
def test_run_starts_before_the_listing_ends_and_resume_still_sees_content(tmp_path, local_args):
    """The bar moves while files are still being listed (and hashed); a file whose
    bytes change but whose size and mtime do not is still redone."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    n = 40
    for i in range(n):
        (src / f"rec_{i:03d}.wav").write_bytes(clip(i, 0.5))
    proc = echocam("run", str(src), "--out", str(out), "--chunk-size", "2", *local_args)
    assert proc.returncode == 0, proc.stderr
    bars = [
        (int(m.group(1)), int(m.group(2)))
        for m in re.finditer(r"echocam run:.*?(\d+)/(\d+) \[", proc.stderr.replace("\r", "\n"))
    ]
    first_progress = next((done, total) for done, total in bars if done > 0)
    # The total grows with the listing: when the first chunk finished, most files were unlisted.
    assert first_progress[1] < n, bars
    assert bars[-1] == (n, n), bars
    assert len(records(out)) == n

    # resume: all done; then one file changes bytes, not size nor mtime: only it is redone
    before = {k: r["finished_at"] for k, r in records(out).items()}
    changed = src / "rec_007.wav"
    stat = changed.stat()
    data = bytearray(changed.read_bytes())
    data[-2:] = b"\x01\x01" if data[-2:] != b"\x01\x01" else b"\x02\x02"
    changed.write_bytes(bytes(data))
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    proc = echocam("run", str(src), "--out", str(out), "--chunk-size", "2", *local_args)
    assert proc.returncode == 0, proc.stderr
    after = {k: r["finished_at"] for k, r in records(out).items()}
    assert [k for k in after if after[k] != before[k]] == ["rec_007.wav"]


@pytest.mark.slow
def test_run_local_writes_its_first_records_before_listing_the_last_file(
    tmp_path, species_checkpoint
):
    """In process, with the real stores watched: the listing (which hashes each file) and the
    work interleave; nothing waits for the whole directory to be read.  The listing reads at most
    ``plan.LIST_AHEAD`` chunks ahead (and the work holds a few chunks in flight): more files than
    that here."""
    from echocam.bucket import plan
    from echocam.bucket.storage import LocalStore
    from echocam.run.local import run_local
    from echocam.settings import Params, Settings

    events: list[str] = []

    class WatchedSource(LocalStore):
        def list(self, **kw):
            for it in super().list(**kw):
                events.append(f"listed {it.key}")
                yield it

    class WatchedDest(LocalStore):
        def put(self, key, data, **kw):
            if key.endswith("record.json"):
                events.append(f"record {key}")
            return super().put(key, data, **kw)

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    chunk_size = 2
    n = (plan.LIST_AHEAD + 8) * chunk_size
    for i in range(n):
        (src / f"rec_{i:03d}.wav").write_bytes(clip(i, 0.5))
    settings = Settings(
        weights=str(species_checkpoint), threads=1, batch_size=8, chunk_size=chunk_size
    )
    run_local(
        WatchedSource(src), WatchedDest(out), params=Params(), settings=settings, progress=False
    )
    first_record = next(i for i, e in enumerate(events) if e.startswith("record"))
    last_listed = events.index(f"listed rec_{n - 1:03d}.wav")
    assert first_record < last_listed, events
    assert sum(e.startswith("record") for e in events) == n


def lines(proc: subprocess.CompletedProcess) -> set[tuple[str, ...]]:
    return {tuple(line.split("\t")) for line in proc.stdout.splitlines() if "\t" in line}


@pytest.mark.slow
def test_run_dry_run_limit_and_retry_failed(tmp_path, local_args):
    """Items 8 and 9 in local mode: the same rule and code path as `produce`."""
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "site").mkdir(parents=True)
    for i in range(3):
        (src / "site" / f"r{i}.wav").write_bytes(clip(i))
    (src / "site" / "empty.wav").write_bytes(b"")
    (src / "notes.txt").write_text("not audio")
    run = ["run", str(src), "--out", str(out), *local_args]

    proc = echocam(*run, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert lines(proc) == {
        ("process", "site/r0.wav"),
        ("process", "site/r1.wav"),
        ("process", "site/r2.wav"),
        ("process", "site/empty.wav"),
        ("skip", "notes.txt", "extension"),
    }, proc.stdout
    assert not out.exists()  # no run.json, no outputs

    proc = echocam(*run, "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(records(out)) == ["site/empty.wav", "site/r0.wav"]
    assert records(out)["site/empty.wav"]["error_code"] == "empty"

    proc = echocam(*run, "--dry-run", "--retry-failed")
    assert lines(proc) == {
        ("process", "site/empty.wav"),
        ("skip", "site/r0.wav", "ok (--retry-failed redoes failed ones only)"),
        ("skip", "site/r1.wav", "no record (--retry-failed redoes failed ones only)"),
        ("skip", "site/r2.wav", "no record (--retry-failed redoes failed ones only)"),
        ("skip", "notes.txt", "extension"),
    }, proc.stdout
    before = records(out)
    proc = echocam(*run, "--retry-failed", "--codes", "empty")
    assert proc.returncode == 0, proc.stderr
    after = records(out)
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert after["site/empty.wav"]["run_id"] == run_id != before["site/empty.wav"]["run_id"]
    assert after["site/r0.wav"] == before["site/r0.wav"] and len(after) == 2

    proc = echocam(*run, "--codes", "empty")
    assert proc.returncode == 2 and "--retry-failed" in proc.stderr
    proc = echocam(*run, "--retry-failed", "--codes", "emtpy")
    assert proc.returncode == 2 and "unknown error code" in proc.stderr
