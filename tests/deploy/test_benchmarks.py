"""Every kept benchmark still runs: ``benchmarks/run_all.py --quick`` at smoke sizes."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_ALL = ROOT / "benchmarks" / "run_all.py"


def benchmark_names() -> list[str]:
    """``run_all.BENCHMARKS``'s names, read without running anything."""
    sys.path.insert(0, str(RUN_ALL.parent))
    try:
        spec = importlib.util.spec_from_file_location("run_all", RUN_ALL)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(RUN_ALL.parent))
    return list(module.BENCHMARKS)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.worker  # run_all.py starts them in its own children, out of the check's sight
def test_every_benchmark_runs_at_smoke_size_and_writes_its_figures(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(RUN_ALL), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = json.loads((out / "latest.json").read_text())
    assert summary["quick"] is True
    for name in benchmark_names():
        result = json.loads((out / f"{name}.json").read_text())
        assert summary["results"][name] == result
        assert result["benchmark"] == name
        assert result["date"][:2] == "20" and result["commit"]
        machine = result["machine"]
        assert machine["cpu"] and machine["cores"] >= 1 and machine["gpu"]
        assert machine["torch"] and machine["python"]
        rows = [r for r in summary["summary"] if r["benchmark"] == name]
        assert rows, f"{name} has no headline figures"
        assert all(r["metric"] != "FAILED" for r in rows)


def test_a_quick_run_refuses_to_write_into_the_committed_results():
    results = ROOT / "benchmarks" / "results"
    before = sorted(p.name for p in results.iterdir())
    proc = subprocess.run(
        [sys.executable, str(RUN_ALL), "--quick", "--only", "host", "--out", str(results)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "--quick writes no results" in proc.stderr
    assert sorted(p.name for p in results.iterdir()) == before


def test_gpu_check_parses_its_arguments_without_a_gpu():
    script = ROOT / "benchmarks" / "gpu_check.py"
    ok = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--parts" in ok.stdout
    bad = subprocess.run(
        [sys.executable, str(script), "--parts", "candidates"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
