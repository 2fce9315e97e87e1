"""The GPU check's Python half (``gpu_check.sh`` runs it): echo-cam on one NVIDIA GPU, briefly.

1. the device: ``nvidia-smi`` and ``torch.cuda.get_device_name``;
2. model + CAM: ``echocam.explain.cam.explain`` on ``HookedResNet18`` (random weights),
   channels_last, in fp32 and in bf16 autocast, at batch 64 / 256 / 1024, next to the forward
   alone (target: >= 20,000 windows/s on an H100);
3. the full path on real recordings: the device stage alone (``Explainer.compute``: spectrogram
   -> image -> model -> CAM -> overlay -> host copy) and local mode end to end (reads, decoding,
   device, PNG/NPZ encoding and writes overlapped), at batch 64 / 256, and with torch.compile
   (``--compile``);
4. local mode end to end: ``echocam run samples --out $OUT/gpu-run --weights random --device D``;
5. local mode in 1 / 4 / 8 processes sharing the device (as worker processes would);
6. training (``bench_train.measure``): ``echocam train``'s loader, front end and step at batch
   256 in bf16 on synthetic species clips, next to the bare step (target >= 5,000 windows/s on
   an H100, training / bare >= 0.8);
7. search (``echocam.search.scan``): the exact scan of 1M unit 512-d float16 vectors (64k-row
   groups) on the device and on the CPU: seconds each, and the top 10 and their similarities
   the same on both (within 1e-6).

The headline: end to end (one process, or several sharing the device) >= 0.5 x the device
stage.  Writes ``$OUT/gpu_check.json`` (``--out``, default $OUT or ./benchmarks/results).  Each
part records its own error and the rest still run; the exit status is 1 if any part failed, 2
if CUDA was asked for and is not there.  ``--device cpu --quick`` runs every part at toy sizes
on the CPU (without torch.compile, whose CPU build takes minutes), to check this script where
there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import _common as C
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, *, iters: int, warmup: int) -> float:
    """Median seconds per call, synchronising the device around every call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def device_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "cpu": C.cpu_model(),
        "cores": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    if shutil.which("nvidia-smi"):
        q = "name,driver_version,memory.total,clocks.max.sm,power.limit"
        proc = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["nvidia_smi"] = proc.stdout.strip() or proc.stderr.strip()
    return info


def model_cam(device: torch.device, batches: list[int], iters: int) -> list[dict]:
    from echocam.explain.cam import explain
    from echocam.explain.model import load_model

    net = load_model("random").net.to(device, memory_format=torch.channels_last)
    rows = []
    for precision in ("fp32", "bf16"):
        for batch in batches:
            row: dict = {"precision": precision, "batch": batch, "channels_last": True}
            try:
                x = torch.randn(batch, 3, 224, 224, device=device)
                x = x.contiguous(memory_format=torch.channels_last)
                enabled = precision == "bf16"

                def forward(x=x, enabled=enabled):
                    with (
                        torch.inference_mode(),
                        torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled),
                    ):
                        net(x)

                def cam(x=x, enabled=enabled):
                    with (
                        torch.inference_mode(),
                        torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled),
                    ):
                        explain(net, x, top_k=1)

                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                f = timed(forward, device, iters=iters, warmup=2)
                c = timed(cam, device, iters=iters, warmup=1)
                row.update(
                    forward_images_per_s=batch / f,
                    explain_images_per_s=batch / c,
                    explain_over_forward=c / f,
                )
                if device.type == "cuda":
                    row["peak_memory_gib"] = round(
                        torch.cuda.max_memory_allocated(device) / 2**30, 2
                    )
                del x
            except Exception as e:  # an OOM at one size must not hide the others
                row["error"] = f"{type(e).__name__}: {e}"[:500]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"  model+CAM {precision} batch {batch}: {_brief(row)}", flush=True)
    return rows


def full_path(
    device: torch.device,
    batches: list[int],
    windows: int,
    iters: int,
    *,
    compile_batch: int | None,
) -> list[dict]:
    """The device stage alone (``Explainer.compute``: spectrogram -> image -> model -> CAM ->
    overlay -> host copy) and local mode end to end (``C.LocalMode``: reads, decoding, device,
    PNG/NPZ encoding and writes overlapped), on real recordings, per batch size; a last row
    with ``torch.compile`` at ``compile_batch`` (none if None)."""
    from echocam.explain.model import load_model
    from echocam.explain.pipeline import Explainer, Source
    from echocam.settings import Params, Settings

    params = Params()
    paths = C.recordings()
    chosen = C.pick_recordings(C.window_counts(paths, params), windows)
    sources = [Source(f"{i:04d}_{p.name}", p.read_bytes()) for i, p in enumerate(chosen)]
    model = load_model("random")
    pool = ThreadPoolExecutor(os.cpu_count() or 8, thread_name_prefix="echocam-io")
    chunk_size = Settings().chunk_size
    rows = []
    compiled_rows = [] if compile_batch is None else [(compile_batch, True)]
    for batch, compiled in [(b, False) for b in batches] + compiled_rows:
        row: dict = {"batch": batch, "compile": compiled, "recordings": len(sources)}
        row.update(io_threads=pool._max_workers, chunk_size=chunk_size)
        local = None
        try:
            ex = Explainer(model, params, device=str(device), batch_size=batch,
                           compile_model=compiled, pool=pool)  # fmt: skip
            decoded = ex.decode(sources)
            n_windows = sum(len(r.windowed.starts) for r in decoded.recordings)
            t0 = time.perf_counter()
            device_stage = partial(_drain, ex.compute, decoded)  # every block, discarded
            device_stage()  # warm-up: kernels, allocator (and compilation)
            sync(device)
            row["first_compute_s"] = time.perf_counter() - t0
            stage_s = timed(device_stage, device, iters=iters, warmup=1)
            row.update(windows=n_windows, device_stage_windows_per_s=n_windows / stage_s)
            if not compiled and batch == batches[-1]:
                row["device_stage_profile"] = profile(device_stage, device)
            local = C.LocalMode(ex, chosen, chunk_size=chunk_size, pool=pool)
            local.run()  # warm-up: the last batch sizes of each chunk
            best, outcomes = None, []
            for _ in range(iters):
                t0 = time.perf_counter()
                outcomes = local.run()
                dt = time.perf_counter() - t0
                best = dt if best is None else min(best, dt)
            stages: dict[str, float] = {}
            for o in outcomes:
                for k, v in o.timings_s.items():
                    stages[k] = stages.get(k, 0.0) + v
            row.update(
                local_mode_windows_per_s=n_windows / best,
                end_to_end_over_device_stage=stage_s / best,
                cpu_seconds_per_window={k: v / n_windows for k, v in stages.items()},
            )
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        finally:
            if local is not None:
                local.close()
        rows.append(row)
        print(f"  batch {batch} compile {compiled}: {_brief(row)}", flush=True)
    pool.shutdown()
    return rows


def processes(device: torch.device, counts: list[int], windows: int) -> list[dict]:
    """Local mode in P processes sharing the device, each on 1/P of the recordings: does one
    device serve more explanations when more processes (as worker processes) decode and encode?
    Each process builds its explainer, warms up, waits for the others, then runs."""
    import multiprocessing as mp

    from echocam.settings import Params

    chosen = C.pick_recordings(C.window_counts(C.recordings(), Params()), windows)
    ctx = mp.get_context("spawn")  # CUDA cannot cross a fork
    rows = []
    for n in counts:
        row: dict = {"processes": n, "threads_per_process": max(1, (os.cpu_count() or 1) // n)}
        try:
            barrier, results = ctx.Barrier(n), ctx.Queue()
            shares = [[str(p) for p in chosen[i::n]] for i in range(n)]
            procs = [
                ctx.Process(target=_process_run, args=(str(device), share, n, barrier, results))
                for share in shares
            ]
            for proc in procs:
                proc.start()
            got = [results.get(timeout=300) for _ in procs]
            for proc in procs:
                proc.join(timeout=60)
            errors = [g["error"] for g in got if "error" in g]
            if errors:
                raise RuntimeError(errors[0])
            wall = max(g["end"] for g in got) - min(g["start"] for g in got)
            total = sum(g["windows"] for g in got)
            row.update(windows=total, wall_s=wall, windows_per_s=total / wall)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        rows.append(row)
        print(f"  {n} processes: {_brief(row)}", flush=True)
    return rows


def _process_run(device: str, paths: list[str], n: int, barrier, results) -> None:
    """One process of ``processes``: warm explainer, barrier, local mode over ``paths``."""
    try:
        from echocam.explain.device import set_threads
        from echocam.explain.model import load_model
        from echocam.explain.pipeline import Explainer, Source
        from echocam.settings import Params

        threads = set_threads(0, processes=n)
        pool = ThreadPoolExecutor(threads)
        ex = Explainer(load_model("random"), Params(), device=device, pool=pool)
        local = C.LocalMode(ex, [Path(p) for p in paths], chunk_size=16, pool=pool)
        ex.explain([Source(p.name, p.read_bytes()) for p in map(Path, paths[:4])])  # warm-up
        barrier.wait(timeout=300)
        start = time.time()
        outcomes = local.run()
        end = time.time()
        local.close()
        results.put({"windows": sum(o.windows for o in outcomes), "start": start, "end": end})
    except Exception as e:
        results.put({"error": f"{type(e).__name__}: {e}"})
        barrier.abort()


def _drain(compute, decoded) -> None:
    """Run the device stage over every block of ``decoded`` (a generator), keeping none."""
    for _ in compute(decoded):
        pass


def profile(fn, device: torch.device, top: int = 12) -> dict[str, str]:
    """torch.profiler's busiest operators in one call of ``fn``, by host time and device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        fn()
        sync(device)
    averages = prof.key_averages()
    tables = {"by_cpu": averages.table(sort_by="self_cpu_time_total", row_limit=top)}
    if device.type == "cuda":
        tables["by_device"] = averages.table(sort_by="self_cuda_time_total", row_limit=top)
    for name, text in tables.items():
        print(f"  profile {name}:\n{text}", flush=True)
    return tables


def local_run(device: torch.device, out: Path, timeout: float) -> dict:
    dest = out / "gpu-run"
    shutil.rmtree(dest, ignore_errors=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(C.ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "echocam_cli", "run", "samples", "--out", str(dest),
            "--weights", "random", "--device", str(device)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=C.ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    row: dict = {
        "command": " ".join(["echocam", *argv[3:]]),
        "returncode": proc.returncode,
        "wall_s": time.perf_counter() - t0,
        "out": str(dest),
    }
    if proc.returncode != 0:
        row["error"] = (proc.stderr or proc.stdout)[-2000:]
    else:
        text = proc.stdout
        try:
            row["summary"] = json.loads(text[text.index("{") : text.index("\n}") + 2])
        except ValueError:
            row["stdout_tail"] = text[-2000:]
        row["overlays"] = len(list(dest.glob("**/overlay.*")))
    print(f"  echocam run samples: {_brief(row)}", flush=True)
    return row


def _brief(row: dict) -> str:
    if "error" in row:
        return "ERROR " + row["error"].splitlines()[0][:200]
    keys = ("forward_images_per_s", "explain_images_per_s", "explain_over_forward",
            "peak_memory_gib", "device_stage_windows_per_s", "local_mode_windows_per_s",
            "windows_per_s", "end_to_end_over_device_stage", "first_compute_s", "wall_s",
            "overlays")  # fmt: skip
    return ", ".join(f"{k} {row[k]:.3g}" for k in keys if isinstance(row.get(k), float | int))


def training(device: torch.device, *, quick: bool) -> dict:
    """``echocam train``'s data path and step (bf16, channels-last, batch 256) next to the bare
    step, on synthetic species clips: target >= 5,000 training windows/s on an H100 with the
    loader keeping up (training / bare >= 0.8, little time waiting for it)."""
    import tempfile

    import bench_train

    with tempfile.TemporaryDirectory(prefix="echocam-gpu-train-") as tmp:
        source = bench_train.write_clips(Path(tmp), clips=12 if quick else 192)
        return bench_train.measure(
            source,
            device=str(device),
            batch=4 if quick else 256,
            batches=2 if quick else 20,
            repeats=1 if quick else 3,
            io_threads=4 if quick else max(4, os.cpu_count() or 4),
            prefetch=4,
        )


def search(device: torch.device, *, quick: bool) -> dict:
    """``scan`` over synthetic unit vectors, on ``device`` and on the CPU: time and agreement."""
    import numpy as np
    import pyarrow as pa

    from echocam.bucket import embeddings
    from echocam.search import scan

    rows, group = (20_000, 4096) if quick else (1_000_000, 65_536)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((rows, 512), dtype=np.float32)
    columns = {"source_key": [f"k{i}" for i in range(rows)], "window_index": [0] * rows,
               "begin_s": [0.0] * rows, "end_s": [5.0] * rows, "class_name": ["a"] * rows,
               "class_id": [0] * rows, "probability": [0.5] * rows, "box": ["call"] * rows,
               **{name: [1.0] * rows for name in embeddings.BOX_COLUMNS}}  # fmt: skip
    batches = pa.Table.from_batches(embeddings.table(columns, v).to_batches(group)).to_batches()
    query = rng.standard_normal(512).astype(np.float32)
    out: dict = {"rows": rows, "row_group": group}
    found = {}
    for name, dev in (("device", device), ("cpu", torch.device("cpu"))):
        scan(batches[:1], query, top=10, device=dev)  # warm-up
        sync(dev)
        t0 = time.perf_counter()
        found[name] = scan(batches, query, top=10, device=dev)
        sync(dev)
        out[f"{name}_s"] = time.perf_counter() - t0
    keys = [found[n].column("source_key").to_pylist() for n in ("device", "cpu")]
    sims = [found[n].column("similarity").to_numpy() for n in ("device", "cpu")]
    out["same_top10"] = keys[0] == keys[1]
    out["max_similarity_diff"] = float(np.abs(sims[0] - sims[1]).max())
    if not out["same_top10"] or out["max_similarity_diff"] > 1e-6:
        raise AssertionError(f"device and CPU scans disagree: {out}")
    return out


def headline(report: dict) -> dict:
    """The target: end to end >= 0.5 x the device stage (the uncompiled rows' fastest device
    stage against the fastest end to end, one process or several sharing the GPU)."""
    rows = [r for r in report.get("full_path") or [] if isinstance(r, dict) and not r["compile"]]
    stage = max((r.get("device_stage_windows_per_s", 0.0) for r in rows), default=0.0)
    ends = [r.get("local_mode_windows_per_s", 0.0) for r in rows]
    ends += [r.get("windows_per_s", 0.0) for r in report.get("processes") or []]
    end = max(ends, default=0.0)
    return {
        "device_stage_windows_per_s": stage,
        "end_to_end_windows_per_s": end,
        "end_to_end_over_device_stage": end / stage if stage else None,
        "target": 0.5,
    }


#: The parts, in the order they run; "device" always runs.
PARTS = ("device", "model_cam", "full_path", "local_run", "processes", "training", "search")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu: a dry run)")
    ap.add_argument(
        "--quick", action="store_true", help="toy sizes, no torch.compile: check the script itself"
    )
    ap.add_argument("--out", default=os.environ.get("OUT") or str(C.RESULTS), help="results dir")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="model+CAM batches")
    ap.add_argument("--path-batches", type=int, nargs="+", default=None, help="Explainer batches")
    ap.add_argument("--windows", type=int, default=None, help="windows for the full path")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (median)")
    ap.add_argument("--processes", type=int, nargs="+", default=None, help="local mode procs")
    ap.add_argument("--parts", nargs="+", default=None, choices=PARTS, help="only these")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: CUDA is not available (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda}); this check needs an NVIDIA GPU and a CUDA build of torch. "
            "Use --device cpu --quick for a dry run.",
            file=sys.stderr,
        )
        return 2
    quick = args.quick
    batches = args.batches or ([2, 4] if quick else [64, 256, 1024])
    path_batches = args.path_batches or ([4] if quick else [64, 256])
    windows = args.windows or (8 if quick else 1024)
    iters = args.iters or (1 if quick else 5)
    counts = args.processes or ([1, 2] if quick else [1, 4, 8])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"benchmark": "gpu_check", "quick": quick, "errors": []}
    t_start = time.perf_counter()
    parts = [
        ("device", lambda: device_info(device)),
        ("model_cam", lambda: model_cam(device, batches, iters)),
        (
            "full_path",
            lambda: full_path(
                device,
                path_batches,
                windows,
                max(1, iters // 2),
                compile_batch=None if quick else path_batches[-1],
            ),
        ),
        ("local_run", lambda: local_run(device, out, timeout=240)),
        ("processes", lambda: processes(device, counts, windows)),
        ("training", lambda: training(device, quick=quick)),
        ("search", lambda: search(device, quick=quick)),
    ]
    if args.parts:
        parts = [part for part in parts if part[0] == "device" or part[0] in args.parts]
    for name, fn in parts:
        print(f"[{name}]", flush=True)
        try:
            report[name] = fn()
        except Exception as e:
            report[name] = {"error": f"{type(e).__name__}: {e}"}
            report["errors"].append(f"{name}: {traceback.format_exc()[-1500:]}")
            print(f"  ERROR {type(e).__name__}: {e}", flush=True)
        if name == "device":
            print("  " + json.dumps(report[name]), flush=True)
        C.write_json(out / "gpu_check.json", report)  # what is done survives a timeout
    for part in ("model_cam", "full_path", "processes"):
        for row in report.get(part) or []:
            if isinstance(row, dict) and "error" in row:
                report["errors"].append(f"{part}: {row['error']}")
    local = report.get("local_run") or {}
    if isinstance(local, dict) and local.get("error"):
        report["errors"].append(f"local_run: {local['error'][-300:]}")
    report["headline"] = headline(report)
    print(f"  headline: {json.dumps(report['headline'])}", flush=True)
    report["total_s"] = time.perf_counter() - t_start
    C.write_json(out / "gpu_check.json", report)
    print(f"gpu_check: {len(report['errors'])} errors, {report['total_s']:.0f} s; "
          f"wrote {out / 'gpu_check.json'}")  # fmt: skip
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
