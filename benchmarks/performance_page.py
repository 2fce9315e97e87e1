"""The docs' Performance page, generated from ``benchmarks/results/*.json``.

``render(results_dir)`` returns the page's markdown: the current figures only, one table per
machine (the newest result of each benchmark on that machine), each row with its date and
commit, then a line per benchmark saying what it measures and the command that reproduces it.
A/B comparisons (``*-ab-*.json``), dry runs (``"quick": true``) and benchmarks no longer kept
are left out.  ``headline(name, result)`` gives a result's headline rows; ``run_all.py`` prints
the same rows.

Standard library only (the docs build imports this; no torch), and deterministic: the same
files give the same page.

    python benchmarks/performance_page.py [RESULTS_DIR]     # prints the page
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

RESULTS = Path(__file__).resolve().parent / "results"

#: name -> (script, what it measures, the command that reproduces it).  The order is the page's.
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "host": (
        "bench_host.py",
        "CPU per window besides the model forward, stage by stage, one thread "
        "(target: all but the forward <= 0.4 x the forward)",
        "python benchmarks/bench_host.py --json benchmarks/results/host.json",
    ),
    "host_threads": (
        "bench_host_threads.py",
        "local mode's host stages (decode, finish, write, and local mode with the device stage "
        "replayed) on a pool of 1 and 2 threads: CPU-ms per window and thread scaling "
        "(targets: <= 1.5 ms per window on one thread; 2 threads >= 0.8 x twice one)",
        "python benchmarks/bench_host_threads.py --json benchmarks/results/host_threads.json",
    ),
    "host_profile": (
        "bench_host_profile.py",
        "where a GPU host's CPU goes per window in local mode with the device stage replayed, "
        "for 5-s clips and a 30-min recording: CPU-ms per window by stage (py-spy), the GIL's "
        "share, 2 threads and 2 processes against 1, objects per recording and the CPU of a PUT "
        "(targets: <= 1.5 CPU-ms per window for clips, <= 1.0 for a 30-min recording; "
        "scaling >= 0.8)",
        "python benchmarks/bench_host_profile.py --json benchmarks/results/host_profile.json",
    ),
    "local": (
        "bench_local.py",
        "local mode end to end (read, decode, device, encode, write, overlapped) against the "
        "bare ResNet-18 forward on the same windows (target: >= 0.8; CAM <= 2 % of the forward)",
        "python benchmarks/run_all.py --only local",
    ),
    "notebook": (
        "bench_notebook.py",
        "echocam against the reference notebook's way (librosa, matplotlib PNGs, batch 1) on "
        "the same 5-s clips (target: >= 10x the notebook's clips/s)",
        "python benchmarks/run_all.py --only notebook",
    ),
    "distributed": (
        "bench_distributed.py",
        "worker throughput with 1 and 2 worker processes against real Redis and SeaweedFS",
        "python benchmarks/run_all.py --only distributed",
    ),
    "producer": (
        "bench_producer.py",
        "`produce` (first run and re-runs) and compaction at bucket scale against the bare S3 "
        "listing, on real SeaweedFS and Redis (target: >= 0.8 x the listing's keys/s)",
        "python benchmarks/bench_producer.py --sizes 10000 100000 "
        "--json benchmarks/results/producer.json",
    ),
    "producer_memory": (
        "bench_producer_memory.py",
        "producer memory at 10k and 100k keys (target: flat; a materialised listing as the "
        "O(keys) control)",
        "python benchmarks/run_all.py --only producer_memory",
    ),
    "outputs": (
        "bench_outputs.py",
        "output bytes / input bytes per kind of file and per format choice "
        "(target: the defaults <= 1.0)",
        "python benchmarks/bench_outputs.py --json benchmarks/results/outputs.json",
    ),
    "long_memory": (
        "bench_long_memory.py",
        "peak RSS for one 30-minute recording in local mode and in a worker's pool process "
        "(target: <= 1.5 GB)",
        "python benchmarks/bench_long_memory.py --json benchmarks/results/long_memory.json",
    ),
    "train": (
        "bench_train.py",
        "training windows/s (loader, front end, step) against the bare step, and the loader's "
        "CPU-ms per window reading the decoded cache and decoding every window "
        "(targets: >= 0.8 of the bare step; <= 2 CPU-ms per window)",
        "python benchmarks/run_all.py --only train",
    ),
    "train_memory": (
        "bench_train_memory.py",
        "peak memory of the training data path at 1k and 10k clips (target: flat; keeping "
        "every decoded clip as the O(clips) control)",
        "python benchmarks/bench_train_memory.py --json benchmarks/results/train_memory.json",
    ),
    "families": (
        "bench_families.py",
        "leave-families-out: a species model trained by the recipe on call families held out of "
        "its tuning; held-out macro-F1 (target >= 0.95), pointing game (target >= 0.9) and "
        "call-box median IoU (target >= 0.5), per family",
        "python benchmarks/run_all.py --only families",
    ),
    "input_size": (
        "bench_input_size.py",
        "what --input-size 0 (9 x 18 CAM cells), and with --output-stride 16 (17 x 35), cost "
        "per window against 224 (7 x 7), end to end and the forward alone",
        "python benchmarks/run_all.py --only input_size",
    ),
    "search": (
        "bench_search.py",
        "embeddings and more like this: what the embeddings output costs a local run (targets: "
        "<= 1.03 x the time, <= 1.15 x the bytes), exact search over 1M and 10M vectors (target: "
        "1M in <= 1 s on 2 cores) against DuckDB and numpy, precision@10 from one call",
        "python benchmarks/run_all.py --only search",
    ),
    "gpu_check": (
        "gpu_check.py",
        "on one NVIDIA GPU: model + CAM (target >= 20k windows/s on an H100), the device stage, "
        "local mode in 1 or more processes, training (target >= 5,000 windows/s on an H100); "
        "end to end / device stage (target >= 0.5)",
        "bash benchmarks/gpu_check.sh",
    ),
}

CPU_ONLY = ("", "none", "not recorded")


class Row(NamedTuple):
    """One headline figure: what, the value, the target (text) and whether it is met."""

    metric: str
    value: float | int | str
    target: str = ""
    verdict: str = ""


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    """Whether ``value`` "meets" or "misses" ``target``."""
    ok = value >= target if higher_is_better else value <= target
    return "meets" if ok else "misses"


def headline(name: str, r: dict[str, Any]) -> list[Row]:
    """The headline rows of benchmark ``name``'s result ``r`` (empty for an unknown name)."""
    make = _HEADLINES.get(name)
    return list(make(r)) if make else []


def _host(r: dict) -> Iterator[Row]:
    for metric, key in (
        ("all but the forward / forward, stages one after another (1 thread)", "host_over_forward"),
        ("the same, Explainer.explain as a whole", "explain_host_over_forward"),
    ):
        yield Row(metric, r[key], "≤ 0.4", verdict(r[key], 0.4, higher_is_better=False))
    yield Row("CPU-ms per window besides the forward", 1000 * r["host_s_per_window"])
    yield Row("forward ms per window", 1000 * r["forward_s_per_window"])


def _host_threads(r: dict) -> Iterator[Row]:
    for stage, s in r["stages"].items():
        ms = s["ms_per_window_1_thread"]
        if stage == "local":
            yield Row("local mode (device replayed): ms per window, 1 thread", ms, "≤ 1.5",
                      verdict(ms, 1.5, higher_is_better=False))  # fmt: skip
        else:
            yield Row(f"{stage}: ms per window, 1 thread", ms)
    for stage in ("local", "decode+finish+write"):
        if stage in r["stages"]:
            half = r["stages"][stage]["scaling"] / 2
            yield Row(f"{stage}: 2 threads / (2 x 1 thread)", half, "≥ 0.8", verdict(half, 0.8))


def _host_profile(r: dict) -> Iterator[Row]:
    for case, target in (("clips", 1.5), ("long", 1.0)):
        c = r["cases"].get(case)
        if c is None:
            continue
        name = "5-s clips" if case == "clips" else "a long recording"
        ms = c["cpu_ms_per_window"]
        yield Row(f"{name}: CPU-ms per window (1 thread)", ms, f"≤ {target}",
                  verdict(ms, target, higher_is_better=False))  # fmt: skip
        if "stages_ms_per_window" in c:
            top = list(c["stages_ms_per_window"].items())[:3]
            yield Row(f"{name}: the largest stages, CPU-ms per window",
                      ", ".join(f"{k} {v:.2f}" for k, v in top))  # fmt: skip
            yield Row(f"{name}: GIL held, ms per window (share of busy samples)",
                      f"{c['gil_ms_per_window']:.2f} ({c['gil_share_of_busy']:.0%})")  # fmt: skip
        for how in ("threads", "processes"):
            v = c[f"scaling_2_{how}"]
            yield Row(f"{name}: 2 {how} / (2 x 1)", v, "≥ 0.8", verdict(v, 0.8))
        if "tmpfs" in c:  # the files on tmpfs: the work's spread without the disk's journal
            t = c["tmpfs"]
            yield Row(f"{name}, files on tmpfs: CPU-ms per window (1 thread)",
                      t["cpu_ms_per_window"], f"≤ {target}",
                      verdict(t["cpu_ms_per_window"], target, higher_is_better=False))  # fmt: skip
            for how in ("threads", "processes"):
                yield Row(f"{name}, files on tmpfs: 2 {how} / (2 x 1)", t[how], "≥ 0.8",
                          verdict(t[how], 0.8))  # fmt: skip
        yield Row(f"{name}: objects written per recording", c["objects_per_recording"])
    if "bucket" in r["cases"]:
        ms = [r["cases"][c]["cpu_ms_per_window"] for c in ("bucket", "bucket-boto3")]
        yield Row("5-s clips to SeaweedFS: CPU-ms per window, obstore / boto3 PUTs",
                  f"{ms[0]:.2f} / {ms[1]:.2f}")  # fmt: skip
    p = r["puts"]
    if "boto3_cpu_ms_per_put" in p:
        yield Row("CPU-ms per 10-kB PUT: local store / S3Store (obstore) / bare boto3",
                  f"{p['local_cpu_ms_per_put']:.2f} / {p['s3_cpu_ms_per_put']:.2f} / "
                  f"{p['boto3_cpu_ms_per_put']:.2f}")  # fmt: skip
    else:
        yield Row("CPU-ms per 10-kB PUT: local store / boto3 to SeaweedFS",
                  f"{p['local_cpu_ms_per_put']:.2f} / {p['s3_cpu_ms_per_put']:.2f}")  # fmt: skip


def _local(r: dict) -> Iterator[Row]:
    for t, d in r["by_threads"].items():
        yield Row(f"{t} thread(s): end to end windows/s", d["e2e_windows_per_s"])
        yield Row(f"{t} thread(s): bare ResNet-18 windows/s", d["bare_windows_per_s"])
        ratio = d["e2e_over_bare"]
        yield Row(f"{t} thread(s): end to end / bare", ratio, "≥ 0.8", verdict(ratio, 0.8))
        pct = d["cam_pct_of_forward"]
        yield Row(f"{t} thread(s): CAM, % of the forward", pct, "≤ 2",
                  verdict(pct, 2.0, higher_is_better=False))  # fmt: skip


def _notebook(r: dict) -> Iterator[Row]:
    yield Row("notebook clips/s", r["notebook_clips_per_s"])
    yield Row("echocam clips/s", r["echocam_clips_per_s"])
    yield Row("echocam / notebook", r["speedup"], "≥ 10", verdict(r["speedup"], 10))


def _distributed(r: dict) -> Iterator[Row]:
    for d in r["configs"]:
        label = f"{d['workers']} worker(s) x {d['threads_per_worker']} thread(s)"
        yield Row(f"{label}: windows/s", d["windows_per_s"])
        yield Row(f"{label}: / the first configuration", d["speedup_vs_first"])
        yield Row(f"{label}: worker cores busy", d["worker_cores_busy"])


#: bench_producer's paths in the page, with their labels and whether the 0.8 target applies.
_PRODUCER = {
    "first": ("produce, first run", True),
    "rerun-compacted-later": ("produce, re-run after a run that ended", True),
    "rerun-compacted": ("produce, re-run within two minutes of the compaction", False),
    "rerun": ("produce, re-run after a run cut off before its end", False),
    "compact": ("compaction", False),
}


def _producer(r: dict) -> Iterator[Row]:
    for n, ratios in r["ratio_to_listing"].items():
        keys = int(n)
        runs = {x["what"]: x for x in r["runs"] if x["keys"] == keys}
        if "list" in runs:
            yield Row(f"{keys:,} keys: bare listing keys/s", runs["list"]["keys_per_s"])
        paired = r.get("paired_ratio_to_listing", {}).get(n, {})
        for what, (label, target) in _PRODUCER.items():
            if what not in ratios:
                continue
            ratio = paired.get(what, ratios[what])
            how = "median of paired runs" if what in paired else "best / best"
            yield Row(
                f"{keys:,} keys: {label} / listing ({how})",
                ratio,
                "≥ 0.8" if target else "",
                verdict(ratio, 0.8) if target else "",
            )
        if "first" in runs:
            yield Row(f"{keys:,} keys: produce peak RSS growth, MiB",
                      runs["first"]["rss_growth_bytes"] / 2**20)  # fmt: skip


def _producer_memory(r: dict) -> Iterator[Row]:
    for path, g in r["growth"].items():
        metric = f"{path}: traced peak at {g['keys_ratio']:.0f}x the keys, ratio"
        ratio = g["tracemalloc_peak_ratio"]
        if path.startswith("control"):
            yield Row(metric, ratio, "(O(keys) control)")
        else:
            yield Row(metric, ratio, "~1 (flat)", "meets" if ratio < 1.5 else "misses")


def _outputs(r: dict) -> Iterator[Row]:
    configs = r["configs"]
    defaults = configs[r["defaults"]]
    yield Row("defaults: output bytes / input bytes", defaults["ratio"], "≤ 1.0",
              verdict(defaults["ratio"], 1.0, higher_is_better=False))  # fmt: skip
    for kind, value in defaults["ratio_by_kind"].items():
        yield Row(f"defaults: {kind} / input bytes", value)
    for label, c in configs.items():
        if label not in (r["defaults"], r.get("baseline")):  # baseline: an older format
            yield Row(f"{label}: output / input bytes", c["ratio"])


def _long_memory(r: dict) -> Iterator[Row]:
    yield Row("import torch alone, peak RSS GB", r["import_torch_gb"])
    yield Row(f"local mode, {r['source']} (the baseline), peak RSS GB", r["local_short_gb"])
    long = r["local_long_gb"]
    label = f"local mode, {r['minutes']:g}-minute recording, peak RSS GB"
    yield Row(label, long, "≤ 1.5", verdict(long, 1.5, higher_is_better=False))
    if "worker" in r:
        peak = r["worker"]["pool_process_peak_gb"]
        yield Row("worker pool process, the same recording, peak RSS GB", peak, "≤ 1.5",
                  verdict(peak, 1.5, higher_is_better=False))  # fmt: skip


def _train(r: dict) -> Iterator[Row]:
    yield Row("training windows/s (loader, front end, step)", r["train_windows_per_s"])
    yield Row("bare step windows/s (forward, backward, AdamW)", r["bare_windows_per_s"])
    ratio = r["train_over_bare"]
    yield Row("training / bare step", ratio, "≥ 0.8", verdict(ratio, 0.8))
    yield Row("data path alone windows/s (loader, front end)", r["data_windows_per_s"])
    yield Row("share of the time waiting for the loader", r["data_wait_fraction"])
    cpu = r.get("loader_cpu_ms_per_window")
    if cpu:
        yield Row("loader CPU-ms per window, decoded cache (decoding every window)",
                  f"{cpu['cached']:.2f} ({cpu['off']:.2f})", "≤ 2",
                  verdict(cpu["cached"], 2.0, higher_is_better=False))  # fmt: skip


def _train_memory(r: dict) -> Iterator[Row]:
    for path, g in r["growth"].items():
        metric = f"{path}: peak RSS above baseline at {g['clips_ratio']:.0f}x the clips, ratio"
        ratio = g["peak_ratio"]
        if path == "decoded":
            yield Row(metric, ratio, "(O(clips) control)")
        else:
            yield Row(metric, ratio, "~1 (flat)", "meets" if ratio < 1.5 else "misses")


def _families(r: dict) -> Iterator[Row]:
    which = ", ".join(r["families"])
    for gap, s in r["by_gap"].items():
        at = f"call gap {gap} s: " if len(r["by_gap"]) > 1 else ""
        f1, pg, iou = s["macro_f1"], s["pointing"], s["call_iou_median"]
        yield Row(f"{at}{which}: held-out macro-F1", f1, "≥ 0.95", verdict(f1, 0.95))
        yield Row(f"{at}pointing game (CAM peak in the whole call's box)", pg, "≥ 0.9",
                  verdict(pg, 0.9))  # fmt: skip
        yield Row(f"{at}call-box median IoU with the whole call", iou, "≥ 0.5",
                  verdict(iou, 0.5))  # fmt: skip
        for kind, f in s["per_family"].items():
            figures = f"{f['f1']:.2f} / {f['pointing']:.2f} / {f['call_iou_median']:.2f}"
            yield Row(f"{at}{kind}: F1 / pointing / call IoU", figures)


def _search(r: dict) -> Iterator[Row]:
    if "cost" in r:
        c = r["cost"]
        yield Row("run CPU time with embeddings ÷ without", c["time_ratio"], "≤ 1.03",
                  verdict(c["time_ratio"], 1.03, higher_is_better=False))  # fmt: skip
        yield Row("output bytes with embeddings ÷ without", c["bytes_ratio"], "≤ 1.15",
                  verdict(c["bytes_ratio"], 1.15, higher_is_better=False))  # fmt: skip
    for n, found in (r.get("latency") or {}).get("by_rows", {}).items():
        for name, m in found["methods"].items():
            if name.startswith("baseline"):
                continue
            if "skipped" in m:  # an index candidate not built or stopped: its reason
                yield Row(f"{int(n):,} vectors: {name}", "not measured: " + m["skipped"])
                continue
            target = ours = ""
            if m.get("recall_at_10") is not None:
                name += f", recall@10 {m['recall_at_10']:.2f}"
            if name.startswith("echocam") and int(n) == 1_000_000:
                target, ours = "≤ 1 s", verdict(m["seconds"], 1.0, higher_is_better=False)
            yield Row(f"{int(n):,} vectors: {name}, s (peak MB {m['peak_mb']:,.0f})",
                      m["seconds"], target, ours)  # fmt: skip
    idle = (r.get("latency") or {}).get("idle_1m") or {}
    for name, m in idle.get("methods", {}).items():
        if name.startswith("echocam"):  # the same scan with both cores free (latency's note)
            ours = verdict(m["seconds"], 1.0, higher_is_better=False)
            label = f"1,000,000 vectors: {name}, idle machine ({idle['date'][:10]}), s"
            yield Row(label, m["seconds"], "≤ 1 s", ours)
    for label, q in ((r.get("quality") or {}).get("precision_at_10") or {}).items():
        yield Row(f"precision@10, {label} embedding: trained / unseen call types",
                  f"{q['trained']:.2f} / {q['unseen']:.2f}")  # fmt: skip


def _input_size(r: dict) -> Iterator[Row]:
    for size, s in r["sizes"].items():
        grid = "x".join(map(str, s["cam_grid"]))
        yield Row(f"input {size or 0}: end to end ms/window ({grid} CAM cells)",
                  s["end_to_end_ms_per_window"])  # fmt: skip
    yield Row("unresized / 224, end to end per window", r["end_to_end_ratio_native_over_224"])
    if "end_to_end_ratio_stride16_over_native" in r:
        yield Row("unresized at stride 16 / unresized, end to end per window",
                  r["end_to_end_ratio_stride16_over_native"])  # fmt: skip


def _gpu_check(r: dict) -> Iterator[Row]:
    for row in _rows(r.get("model_cam")):
        if "explain_images_per_s" in row:
            rate = row["explain_images_per_s"]
            metric = f"model + CAM, {row['precision']}, batch {row['batch']}: windows/s"
            bf16 = row["precision"] == "bf16"
            yield Row(metric, rate, "≥ 20,000" if bf16 else "",
                      verdict(rate, 20_000) if bf16 else "")  # fmt: skip
    for row in _rows(r.get("full_path")):
        how = f"batch {row['batch']}" + (", torch.compile" if row.get("compile") else "")
        if "device_stage_windows_per_s" in row:
            yield Row(f"device stage, {how}: windows/s", row["device_stage_windows_per_s"])
        if "local_mode_windows_per_s" in row:
            yield Row(f"local mode, one process, {how}: windows/s", row["local_mode_windows_per_s"])
    for row in _rows(r.get("processes")):
        if "windows_per_s" in row:
            yield Row(
                f"local mode in {row['processes']} processes: windows/s", row["windows_per_s"]
            )
    train = r.get("training")
    if isinstance(train, dict) and "train_windows_per_s" in train:
        rate = train["train_windows_per_s"]
        yield Row(f"training windows/s, batch {train['batch']}", rate, "≥ 5,000",
                  verdict(rate, 5000))  # fmt: skip
        yield Row("bare training step windows/s", train["bare_windows_per_s"])
    ratio = (r.get("headline") or {}).get("end_to_end_over_device_stage")
    if ratio is not None:
        yield Row("end to end / device stage (best)", ratio, "≥ 0.5", verdict(ratio, 0.5))


def _rows(part: Any) -> list[dict]:
    return [row for row in part if isinstance(row, dict)] if isinstance(part, list) else []


_HEADLINES = {
    "host": _host,
    "host_threads": _host_threads,
    "host_profile": _host_profile,
    "local": _local,
    "notebook": _notebook,
    "distributed": _distributed,
    "producer": _producer,
    "producer_memory": _producer_memory,
    "outputs": _outputs,
    "long_memory": _long_memory,
    "train": _train,
    "train_memory": _train_memory,
    "families": _families,
    "input_size": _input_size,
    "search": _search,
    "gpu_check": _gpu_check,
}


class Result(NamedTuple):
    """One benchmark's figures, with the machine, date and commit they were measured at."""

    name: str
    data: dict[str, Any]
    machine: dict[str, Any]
    date: str
    commit: str
    file: str

    @property
    def machine_key(self) -> tuple[str, str, str]:
        gpu = str(self.machine.get("gpu") or "")
        return (
            str(self.machine.get("cpu", "not recorded")),
            str(self.machine.get("cores", "?")),
            "" if gpu in CPU_ONLY else gpu,
        )


def load(results_dir: Path) -> list[Result]:
    """Every current-figure result under ``results_dir``: each file, and each benchmark of a
    ``run_all.py`` summary (``latest.json``), which lends its machine, date and commit to the
    results that do not carry their own."""
    found = []
    for path in sorted(results_dir.glob("*.json")):
        if "-ab-" in path.name:  # a comparison of commits: history, not current figures
            continue
        top = json.loads(path.read_text())
        if top.get("quick"):
            continue
        inner = top.get("results")
        items = inner.items() if isinstance(inner, dict) else [(top.get("benchmark"), top)]
        for name, data in items:
            if name not in BENCHMARKS or not isinstance(data, dict) or data.get("quick"):
                continue
            found.append(
                Result(
                    name=name,
                    data=data,
                    machine={**(top.get("machine") or {}), **(data.get("machine") or {})},
                    date=str(data.get("date") or top.get("date") or "not recorded"),
                    commit=str(data.get("commit") or top.get("commit") or "not recorded"),
                    file=path.name,
                )
            )
    return found


def current(results: list[Result]) -> list[Result]:
    """The newest result of each benchmark on each machine."""
    newest: dict[tuple, Result] = {}
    for r in results:
        key = (r.machine_key, r.name)
        if key not in newest or (r.date, r.file) > (newest[key].date, newest[key].file):
            newest[key] = r
    return list(newest.values())


def machine_label(key: tuple[str, str, str]) -> str:
    cpu, cores, gpu = key
    host = f"{cpu}, {cores} cores"
    return f"{gpu}, host {host}" if gpu else f"{host}, CPU only"


def render(results_dir: Path) -> str:
    """The Performance page's markdown, from the JSON files in ``results_dir``."""
    results = current(load(Path(results_dir)))
    order = list(BENCHMARKS)
    machines: dict[tuple, list[Result]] = {}
    for r in sorted(results, key=lambda r: (r.machine_key, order.index(r.name))):
        machines.setdefault(r.machine_key, []).append(r)
    # the machine measured most recently first
    keys = sorted(machines, key=lambda k: (max(r.date for r in machines[k]), k), reverse=True)
    lines = [
        "# Performance",
        "",
        "Current figures only: the newest result of each benchmark on each machine, generated "
        "from `benchmarks/results/*.json` by `benchmarks/performance_page.py`. Each figure "
        "comes from one run on one machine; the machines are shared, so absolute rates move "
        "with the load, and ratios of things measured in the same run are what to compare. "
        "What each benchmark measures, and how it runs, is at the end of the page.",
        "",
    ]
    for key in keys:
        rows = machines[key]
        dates = sorted({_day(r.date) for r in rows})
        span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        lines += [
            f"## {machine_label(key)}",
            "",
            f"Measured {span}; {_software(rows)}. Each benchmark's first row gives the day it "
            "ran and the commit it measured.",
            "",
            "| benchmark | date | commit | measure | figure | target | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            anchor = r.name.replace("_", "-")
            first = f"[{r.name}](#{anchor}) | {_day(r.date)} | {_commit(r.commit)}"
            for i, row in enumerate(headline(r.name, r.data)):
                lines.append(
                    f"| {first if i == 0 else ' |  | '} | {_text(row.metric)} | {fmt(row.value)} | "
                    f"{row.target} | {row.verdict} |"
                )
        lines.append("")
    lines += ["## The benchmarks", ""]
    for name, (script, what, command) in BENCHMARKS.items():
        lines += [
            f"### {name.replace('_', '-')}",
            "",
            f"`benchmarks/{script}`: {what}. Reproduce: `{command}`.",
            "",
        ]
    return "\n".join(lines)


def _software(rows: list[Result]) -> str:
    torch = sorted({str(r.machine.get("torch", "not recorded")) for r in rows})
    python = sorted({str(r.machine.get("python", "not recorded")) for r in rows})
    return f"torch {', '.join(torch)}; Python {', '.join(python)}"


def _day(date: str) -> str:
    """``2026-11-27T01:16:44+00:00`` -> ``2026-11-27``."""
    return date[:10] if date[:4].isdigit() else date


def _commit(commit: str) -> str:
    """A full hash shortened to 7 characters; anything else as it is."""
    head, plus, rest = commit.partition("+")
    if len(head) == 40 and all(c in "0123456789abcdef" for c in head):
        head = head[:7]
    return head + plus + rest


def _text(text: str) -> str:
    """A table cell's words as markdown shows them: ``<`` and ``>`` are not HTML tags."""
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", r"\|")


def fmt(x: Any) -> str:
    """A figure as the tables show it: three significant digits, thousands grouped."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS))
