"""LocalStore writes: files follow the process umask, as any other tool's output does."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from devtools.stack import ROOT
from echocam.bucket.storage import LocalStore


@pytest.fixture()
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_put_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    store = LocalStore(tmp_path)
    assert store.put("a/b.json", b"{}")
    assert store.put("a/c.json", b"{}", if_absent=True)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    store.put_file("a/d.bin", src)
    for name in ("b.json", "c.json", "d.bin"):
        assert stat.S_IMODE((tmp_path / "a" / name).stat().st_mode) == mode, name


@pytest.mark.slow
def test_local_mode_outputs_are_readable_by_the_group_and_others(tmp_path, species_checkpoint):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "echocam_cli", "run", str(ROOT / "samples" / "spinetail_44k.wav"),
         "--out", str(out), "--weights", str(species_checkpoint), "--threads", "2"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        preexec_fn=lambda: os.umask(0o002),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 9  # outputs, record, run.json, tables, summary
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o664}
