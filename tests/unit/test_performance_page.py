"""The docs' Performance page, generated from the committed benchmark results."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "benchmarks" / "performance_page.py"
RESULTS = ROOT / "benchmarks" / "results"


def page_module():
    spec = importlib.util.spec_from_file_location("performance_page", PAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sections(markdown: str) -> dict[str, str]:
    """Level-2 heading -> its text."""
    out, current = {}, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            current = line[3:]
            out[current] = ""
        elif current:
            out[current] += line + "\n"
    return out


def test_each_machine_has_one_table_with_the_date_and_commit_of_each_result():
    pp = page_module()
    page = pp.render(RESULTS)
    by_machine: dict[tuple, list] = {}
    for r in pp.current(pp.load(RESULTS)):
        by_machine.setdefault(r.machine_key, []).append(r)
    assert len(by_machine) >= 3  # the two CPU machines and the H100 host
    found = sections(page)
    for key, results in by_machine.items():
        text = found[pp.machine_label(key)]
        assert text.count("| benchmark | date | commit |") == 1
        table = [line for line in text.splitlines() if line.startswith("| [")]
        assert len(table) == len(results)  # one first row per benchmark
        for r in results:
            row = next(line for line in table if line.startswith(f"| [{r.name}]"))
            assert f"| {r.date[:10]} |" in row
            assert r.date[:4] == "2026"
            assert f"| {r.commit[:7]}" in row
        assert "Measured 2026-" in text


def test_every_committed_result_carries_its_machine_date_and_commit():
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        assert {"benchmark", "date", "commit", "machine"} <= data.keys(), path.name
        assert {"cpu", "cores", "gpu", "torch", "python"} <= data["machine"].keys(), path.name


def test_current_figures_only(tmp_path):
    """A/B files, dry runs and older results of the same machine stay off the page."""
    pp = page_module()
    machine = {"cpu": "Test CPU", "cores": 4, "gpu": "none", "torch": "2", "python": "3.11"}

    def notebook(date: str, speedup: float, **extra) -> dict:
        return {"benchmark": "notebook", "date": date, "commit": "abc1234", "machine": machine,
                "notebook_clips_per_s": 1.0, "echocam_clips_per_s": speedup,
                "speedup": speedup, **extra}  # fmt: skip

    files = {
        "old.json": notebook("2026-01-01T00:00:00+00:00", 7.5),
        "new.json": notebook("2026-02-01T00:00:00+00:00", 12.25),
        "notebook-ab-2026-03-01.json": notebook("2026-03-01T00:00:00+00:00", 99.5),
        "dry.json": notebook("2026-04-01T00:00:00+00:00", 55.5, quick=True),
    }
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    page = pp.render(tmp_path)
    text = sections(page)["Test CPU, 4 cores, CPU only"]
    assert "| 12.25 | ≥ 10 | meets |" in text
    assert "2026-02-01" in text
    for gone in ("7.50", "99.5", "55.5", "2026-01-01", "2026-03-01", "2026-04-01"):
        assert gone not in page


def test_the_page_is_deterministic_and_imports_nothing_heavy(tmp_path):
    shutil.copytree(RESULTS, tmp_path / "results")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pp', {str(PAGE)!r})\n"
        "pp = importlib.util.module_from_spec(spec); spec.loader.exec_module(pp)\n"
        f"page = pp.render(__import__('pathlib').Path({str(tmp_path / 'results')!r}))\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
        "sys.stdout.write(page)\n"
    )
    first, second = (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    )
    assert first.stdout == second.stdout == page_module().render(RESULTS)
