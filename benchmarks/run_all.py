"""Run every benchmark, print one table of the headline ratios, write results/latest.json.

    python benchmarks/run_all.py                 # everything, about 8-10 minutes on 2 cores
    python benchmarks/run_all.py --quick         # toy sizes, a few minutes: checks the scripts
                                                 # (writes no results unless --out is given)
    python benchmarks/run_all.py --only cam local

Each benchmark runs in its own process (torch threads, peak memory and imports stay separate)
and writes its own JSON; this script gathers them under ``benchmarks/results/latest.json`` with
the machine they ran on.  Run one benchmark alone for its full table and its flags (``--help``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve().parent

COLUMNS = ["benchmark", "metric", "value", "target", "verdict"]

#: name -> (script, default args, --quick args)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "local": ("bench_local.py", [], ["--windows", "32", "--repeats", "1"]),
    "host": ("bench_host.py", [], ["--windows", "32", "--repeats", "1"]),
    "notebook": ("bench_notebook.py", [], ["--clips", "8", "--repeats", "1"]),
    "cam": ("bench_cam.py", [], ["--batch", "8", "--repeats", "1"]),
    "distributed": (
        "bench_distributed.py",
        [],
        ["--recordings", "8", "--configs", "1x1", "2x1"],
    ),
    "png": ("bench_png.py", [], ["--recordings", "1", "--repeats", "1"]),
    "outputs": ("bench_outputs.py", [], []),
    "producer_memory": ("bench_producer_memory.py", [], ["--sizes", "1000", "10000"]),
    "train": ("bench_train.py", [], ["--batches", "2", "--repeats", "1", "--clips", "12"]),
    "train_memory": ("bench_train_memory.py", [], ["--sizes", "100", "400"]),
    "pointing": (
        "bench_pointing.py",
        [],
        ["--train-per-class", "4", "--epochs", "1", "--epoch-windows", "16", "--heldout", "2"],
    ),
    "gpu_check_cpu": (
        "gpu_check.py",
        ["--device", "cpu", "--quick"],
        ["--device", "cpu", "--quick"],
    ),
}


def run_one(name: str, args: list[str], tmp: Path, timeout: float) -> tuple[dict | None, float]:
    script, *_ = BENCHMARKS[name]
    out = tmp / f"{name}.json"
    extra = ["--out", str(tmp / name)] if name == "gpu_check_cpu" else ["--json", str(out)]
    if name == "gpu_check_cpu":
        out = tmp / name / "gpu_check.json"
    print(f"\n=== {name}: {script} {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / script), *args, *extra], timeout=timeout, check=False
        )
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    seconds = time.monotonic() - t0
    if code != 0 or not out.is_file():
        print(f"=== {name}: FAILED ({code}) after {seconds:.0f} s", flush=True)
        return None, seconds
    return json.loads(out.read_text()), seconds


def headline(name: str, r: dict) -> list[list]:
    """(benchmark, metric, value, target, verdict) rows for the summary table."""
    rows: list[list] = []

    def row(metric: str, value: float, target: str = "", verdict: str = "") -> None:
        rows.append([name, metric, value, target, verdict])

    def at_most(value: float, limit: float) -> str:
        return C.verdict(value, limit, higher_is_better=False)

    if name == "local":
        for t, d in r["by_threads"].items():
            row(f"t={t} end-to-end windows/s", d["e2e_windows_per_s"])
            row(f"t={t} bare ResNet-18 windows/s", d["bare_windows_per_s"])
            ratio = d["e2e_over_bare"]
            row(f"t={t} end-to-end / bare", ratio, ">= 0.8", C.verdict(ratio, 0.8))
            pct = d["cam_pct_of_forward"]
            row(f"t={t} CAM % of forward", pct, "<= 2", at_most(pct, 2.0))
    elif name == "host":
        for metric, key in (
            ("host CPU / forward, stages (t=1)", "host_over_forward"),
            ("host CPU / forward, Explainer.explain (t=1)", "explain_host_over_forward"),
        ):
            row(metric, r[key], "<= 0.4", at_most(r[key], 0.4))
        row("host CPU ms/window (t=1)", 1000 * r["host_s_per_window"])
        row("forward ms/window (t=1)", 1000 * r["forward_s_per_window"])
    elif name == "notebook":
        row("notebook clips/s", r["notebook_clips_per_s"])
        row("echocam clips/s", r["echocam_clips_per_s"])
        row("echocam / notebook", r["speedup"], ">= 10", C.verdict(r["speedup"], 10))
    elif name == "cam":
        for case, d in r["cases"].items():
            if not case.startswith("hooked forward"):  # the denominator itself
                row(f"{case} / hooked forward", d["ratio_to_forward"])
        pct = r["cam_only_pct_of_forward"]
        row("CAM alone top-1, % of forward", pct["top1"], "<= 2", at_most(pct["top1"], 2.0))
        row("CAM alone top-5, % of forward", pct["top5"], "<= 2", at_most(pct["top5"], 2.0))
        row("GradCAM / echocam top-1", r["gradcam_over_top1"])
    elif name == "distributed":
        for d in r["configs"]:
            label = f"{d['workers']}w x {d['threads_per_worker']}t"
            row(f"{label} recordings/s", d["recordings_per_s"])
            row(f"{label} windows/s", d["windows_per_s"])
            row(f"{label} / first config", d["speedup_vs_first"])
            row(f"{label} worker cores busy", d["worker_cores_busy"])
    elif name == "png":
        best = r["fastest_pillow"]
        ratio = r["pillow_time_ratio"]
        row(f"{best} (zlib-ng: {r['pillow_zlib_ng']}) time / {r['default']}", ratio, "> 1.5",
            C.verdict(ratio, 1.5))  # fmt: skip
        row(f"{best} bytes / {r['default']}", r["pillow_bytes_ratio"])
    elif name == "outputs":
        defaults = r["configs"][r["defaults"]]
        ratio = defaults["ratio"]
        row("defaults: output bytes / input bytes", ratio, "<= 1.0", at_most(ratio, 1.0))
        for kind, value in defaults["ratio_by_kind"].items():
            row(f"defaults: {kind} bytes / input bytes", value)
        for label, c in r["configs"].items():
            if label != r["defaults"]:
                row(f"{label}: output / input bytes", c["ratio"])
    elif name == "producer_memory":
        for path, g in r["growth"].items():
            metric = f"{path}: traced peak, {g['keys_ratio']:.0f}x keys"
            ratio = g["tracemalloc_peak_ratio"]
            if path.startswith("control"):
                row(metric, ratio, "(O(keys) control)")
            else:
                row(metric, ratio, "~1 (flat)", "flat" if ratio < 1.5 else "grows")
            row(f"{path}: RSS growth MiB, large", g["rss_growth_mib_large"])
    elif name == "train":
        row("training windows/s (loader + front end + step)", r["train_windows_per_s"])
        row("bare forward+backward+AdamW windows/s", r["bare_windows_per_s"])
        ratio = r["train_over_bare"]
        row("training / bare", ratio, ">= 0.8", C.verdict(ratio, 0.8))
        row("time waiting for the loader", r["data_wait_fraction"])
        row("data path alone windows/s (loader + front end)", r["data_windows_per_s"])
        row("peak RSS MiB", r["peak_rss_mib"])
    elif name == "train_memory":
        for path, g in r["growth"].items():
            metric = f"{path}: peak RSS above baseline, {g['clips_ratio']:.0f}x clips"
            ratio = g["peak_ratio"]
            if path == "decoded":
                row(metric, ratio, "(O(clips) control)")
            else:
                row(metric, ratio, "~1 (flat)", "flat" if ratio < 1.5 else "grows")
    elif name == "pointing":
        row(
            "held-out macro-F1",
            r["heldout_macro_f1"],
            ">= 0.9",
            C.verdict(r["heldout_macro_f1"], 0.9),
        )
        pg = r["pointing_game"]
        row("pointing game (CAM peak in the call's box)", pg, ">= 0.8", C.verdict(pg, 0.8))
    elif name == "gpu_check_cpu":
        n = len(r["errors"])
        row("dry run (--device cpu --quick) errors", n, "0", "meets" if n == 0 else "misses")
        ratio = (r.get("headline") or {}).get("end_to_end_over_device_stage")
        if ratio is not None:
            row("dry run: end to end / device stage (CPU: not the GPU target)", ratio)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None)
    ap.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[])
    ap.add_argument("--quick", action="store_true", help="toy sizes (checks the scripts)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per benchmark")
    ap.add_argument("--out", default=None, help="default: results/latest.json; none with --quick")
    args = ap.parse_args(argv)
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    results: dict[str, dict | None] = {}
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="echocam-bench-") as tmp:
        for name in names:
            _, default, quick = BENCHMARKS[name]
            if args.quick and name == "pointing":  # toy figures stay out of results/
                quick = [*quick, "--figure", str(Path(tmp) / "pointing_game.jpg")]
            results[name], seconds[name] = run_one(
                name, quick if args.quick else default, Path(tmp), args.timeout
            )
    total = time.monotonic() - t0
    machine = C.machine()
    machine.pop("torch_threads")
    rows: list[list] = []
    for name in names:
        if results[name] is None:
            rows.append([name, "FAILED", "", "", ""])
        else:
            rows.extend(headline(name, results[name]))
    print("\n" + "=" * 100)
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"python {machine['python']} (threads per row; load {machine['loadavg_1m']})"
    )
    print(C.table(rows, COLUMNS))
    print(
        "time: "
        + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items())
        + f"; total {total:.0f} s"
    )
    out = args.out or (None if args.quick else str(C.RESULTS / "latest.json"))
    if out is None:  # a check of the scripts: the toy figures are not results
        return 0 if all(r is not None for r in results.values()) else 1
    C.write_json(
        out,
        {
            "machine": machine,
            "quick": args.quick,
            "total_s": total,
            "seconds": seconds,
            "summary": [
                dict(zip(["benchmark", "metric", "value", "target", "verdict"], r, strict=True))
                for r in rows
            ],
            "results": results,
        },
    )
    print(f"wrote {out}")
    return 0 if all(r is not None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
