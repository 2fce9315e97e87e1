"""Run every benchmark, print one table of the headline figures, write the results.

    python benchmarks/run_all.py                  # everything: benchmarks/results/latest.json
    python benchmarks/run_all.py --quick --out D  # smoke sizes, 1 repeat: checks every script
    python benchmarks/run_all.py --only host local

Each benchmark runs in its own process (torch threads, peak memory and imports stay apart) and
writes its own JSON.  With ``--out DIR`` each one's JSON is ``DIR/<name>.json`` and the run's
summary (machine, date, commit, headline rows, every result) ``DIR/latest.json``; without it a
full run writes only the summary, to ``benchmarks/results/latest.json``, and a quick run keeps
nothing.  A quick run never writes under ``benchmarks/results/``: its figures are not results.
It runs two benchmarks at a time (``--jobs``), each one's output kept in ``<name>.log``; a
full run measures one at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import performance_page

HERE = Path(__file__).resolve().parent

#: name -> (full-run args, --quick args); the script is ``performance_page.BENCHMARKS``'s, which
#: names the same benchmarks.  Every kept benchmark has a quick form: smoke sizes, one repeat, a
#: few seconds each.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "host": ("", "--windows 8 --repeats 1"),
    "host_threads": ("", "--windows 8 --repeats 1 --chunk-size 4"),
    "host_profile": (
        "",
        "--seconds 0.2 --clips 4 --long-minutes 0.25 --puts 10 --no-profile --scaling-rounds 1",
    ),
    "local": ("", "--windows 8 --batch 8 --threads 1 --repeats 1"),
    "notebook": ("", "--clips 2 --batch 2 --repeats 1"),
    "distributed": ("", "--recordings 2 --task-size 1 --configs 1x1"),
    "producer": ("", "--sizes 200 --repeats 1 --paths list first rerun compact rerun-compacted"),
    "producer_memory": ("", "--sizes 100 1000"),
    "outputs": ("", "--recordings 1"),
    "long_memory": ("", "--minutes 0.2 --skip-worker"),
    "train": ("", "--clips 8 --batch 4 --batches 1 --repeats 1 --io-threads 2"),
    "train_memory": ("", "--sizes 8 16 --distinct 4 --paths stream --batch 4 --io-threads 2"),
    "families": (
        # the guide's schedule (docs/guides/training.md#what-to-expect): the recipe's defaults
        # but 20 epochs of 96 windows, without an early stop
        "--families held-out --seed 1 --set epochs=20 --set epoch_windows=96 --set batch_size=16 "
        "--set val_fraction=0.15 --set patience=20",
        "--families held-out --train-per-class 2 --heldout 1 --set epochs=1 "
        "--set epoch_windows=4 --set batch_size=4",
    ),
    "input_size": ("", "--windows 4 --rounds 1 --batch 4"),
    "search": ("--rows 1000000 10000000", "--rows 20000 --repeats 1 --recordings 2 --copies 1"),
    # No GPU here: its dry run on the CPU checks the script (the quick form without the
    # processes part, whose spawned processes each import torch).
    "gpu_check": (
        "--device cpu --quick",
        "--device cpu --quick --parts model_cam full_path local_run training",
    ),
}
assert BENCHMARKS.keys() == performance_page.BENCHMARKS.keys()

#: The quick forms that take longest (real services, several processes).
SLOW = ("distributed", "producer", "long_memory", "train_memory")

COLUMNS = ["benchmark", "metric", "value", "target", "verdict"]


def run_one(
    name: str, args: list[str], out: Path, timeout: float, *, log: bool = False, figures: bool
) -> tuple[dict | None, float]:
    """Run benchmark ``name``; its JSON ends up at ``out/<name>.json`` (with ``figures``, its
    figures too; else where the benchmark puts them).  Its output goes to the terminal as it
    runs, or with ``log`` to ``out/<name>.log``, printed when it ends."""
    script = performance_page.BENCHMARKS[name][0]
    path = out / f"{name}.json"
    # gpu_check writes a folder: gpu_check.json and its local run's outputs
    extra = ["--out", str(out / name)] if name == "gpu_check" else ["--json", str(path)]
    if name == "families" and figures and "--figure" not in args:
        extra += ["--figure", str(out / "families.jpg")]
    head = f"\n=== {name}: {script} {' '.join(args)}"
    if not log:
        print(head, flush=True)
    t0 = time.monotonic()
    with open(out / f"{name}.log", "w") if log else contextlib.nullcontext() as sink:
        try:
            code = subprocess.run(
                [sys.executable, str(HERE / script), *args, *extra],
                timeout=timeout,
                check=False,
                stdout=sink,
                stderr=subprocess.STDOUT if log else None,
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = time.monotonic() - t0
    if log:
        print(head + "\n" + (out / f"{name}.log").read_text(), flush=True)
    if name == "gpu_check" and (out / name / "gpu_check.json").is_file():
        shutil.copyfile(out / name / "gpu_check.json", path)
    if code != 0 or not path.is_file():
        print(f"=== {name}: FAILED ({code}) after {seconds:.0f} s", flush=True)
        return None, seconds
    return json.loads(path.read_text()), seconds


def rows_of(name: str, result: dict | None) -> list[list]:
    """Summary rows of one benchmark (a dry run of gpu_check: its error count)."""
    if result is None:
        return [[name, "FAILED", "", "", ""]]
    if name == "gpu_check" and result.get("quick"):
        n = len(result["errors"])
        return [[name, "dry run: errors", n, "0", "meets" if n == 0 else "misses"]]
    return [[name, *r] for r in performance_page.headline(name, result)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None)
    ap.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[])
    ap.add_argument("--quick", action="store_true", help="smoke sizes: checks the scripts")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark")
    ap.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="with --quick, benchmarks run at once (default 2); a full run measures one at a time",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="a folder for every benchmark's JSON and latest.json (default: a full run writes "
        "benchmarks/results/latest.json only; a quick run keeps nothing)",
    )
    args = ap.parse_args(argv)
    if args.quick and args.out and args.out.resolve().is_relative_to(C.RESULTS.resolve()):
        ap.error(f"--quick writes no results: choose an --out outside {C.RESULTS}")
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    results: dict[str, dict | None] = {}
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="echocam-bench-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        jobs = max(1, args.jobs) if args.quick else 1

        def one(name: str) -> tuple[dict | None, float]:
            full, quick = BENCHMARKS[name]
            given = shlex.split(quick if args.quick else full)
            # a full run without --out keeps its figure in results/, beside latest.json
            figures = args.quick or args.out is not None
            return run_one(name, given, out, args.timeout, log=jobs > 1, figures=figures)

        # the longest first, so the short ones fill the other lanes
        order = sorted(names, key=lambda n: n not in SLOW) if jobs > 1 else names
        with ThreadPoolExecutor(jobs) as pool:
            for name, (result, took) in zip(order, pool.map(one, order), strict=True):
                results[name], seconds[name] = result, took
    total = time.monotonic() - t0
    rows = [row for name in names for row in rows_of(name, results[name])]
    machine = C.machine()
    machine.pop("torch_threads")
    print("\n" + "=" * 100)
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, GPU {machine['gpu']}, torch "
        f"{machine['torch']}, python {machine['python']} (load {machine['loadavg_1m']})"
    )
    print(C.table(rows, COLUMNS))
    print("time: " + ", ".join(f"{n} {seconds[n]:.0f} s" for n in names))
    print(f"total {total:.0f} s")
    ok = all(r is not None for r in results.values())
    if args.out:
        summary = args.out / "latest.json"
    elif not args.quick:
        summary = C.RESULTS / "latest.json"
    else:
        return 0 if ok else 1
    C.write_json(
        summary,
        {
            "benchmark": "run_all",
            "machine": machine,
            "quick": args.quick,
            "total_s": total,
            "seconds": seconds,
            "summary": [dict(zip(COLUMNS, r, strict=True)) for r in rows],
            "results": results,
        },
    )
    print(f"wrote {summary}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
