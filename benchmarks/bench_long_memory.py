"""Peak memory for one long recording: local mode, and a real Celery worker's pool process.

A real 44.1 kHz recording is repeated into a mono 16-bit WAV of ``--minutes`` (default: just
under the 30-minute cap).  Each figure is a fresh process's peak resident set size:

- ``import torch`` alone, and local mode (``echocam run``) on the short recording the long one
  is made of: the baseline every explaining process pays (interpreter, torch, torchvision,
  the model, one batch);
- local mode on the long recording (``ru_maxrss`` of the ``echocam run`` process);
- a worker: Redis and SeaweedFS (``devtools.services``), ``echocam worker --concurrency 1``
  (``devtools.stack.Worker``), ``echocam produce --wait`` of the long recording; the pool
  process's ``VmHWM`` (its peak RSS, from ``/proc``) after its warm-up and after the task, and
  the worker's main process.

    python benchmarks/bench_long_memory.py [--minutes 29.98] [--skip-worker]

Target: peak RSS <= 1.5 GB.  Slow at its default length (a 30-minute recording explained twice
on the CPU: about 2-4 minutes on 2 cores); ``run_all.py --quick`` runs it at 0.2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np
import soundfile as sf

from devtools.services import RedisServer, SeaweedS3
from devtools.stack import ROOT, Worker

TARGET_GB = 1.5


def peak_rss_gb(argv: list[str], *, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(peak RSS in GB, wall seconds) of ``argv`` run to completion in a fresh child."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if out.returncode:
        raise RuntimeError(f"{argv} failed:\n{out.stderr[-3000:]}")
    kb, wall = out.stdout.split()
    return int(kb) / 1e6, float(wall)


def long_recording(minutes: float, work: Path) -> tuple[Path, Path]:
    """(the short source recording, the long WAV made of it)."""
    paths = C.recordings()
    short = next((p for p in paths if "44k" in p.name), paths[0])
    x, sr = sf.read(short, dtype="int16")
    x = x[:, 0] if x.ndim > 1 else x
    n = int(minutes * 60 * sr)
    path = work / f"long_{minutes:g}min.wav"
    sf.write(path, np.tile(x, -(-n // x.shape[0]))[:n], sr, subtype="PCM_16")
    return short, path


def status_kb(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1))


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parents[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


def worker_peak(long_wav: Path, *, env: dict[str, str], work: Path, timeout: float) -> dict:
    """Explain ``long_wav`` with one real worker process; the pool process's peak RSS."""
    with RedisServer() as redis_srv, SeaweedS3() as s3:
        s3.create_bucket("long-in")
        s3.create_bucket("long-out")
        s3.client().upload_file(str(long_wav), "long-in", f"recs/{long_wav.name}")
        wenv = {**env, **s3.env(), "ECHOCAM_BROKER_URL": redis_srv.url}
        worker = Worker(wenv, name="long", log_dir=work, args=["--concurrency", "1"]).start()
        try:
            worker.wait_ready()
            pool = children(worker.proc.pid)  # the prefork pool's process
            warm = {p: status_kb(p, "VmHWM") for p in pool}
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "echocam_cli", "produce", "s3://long-in/recs", "--out",
                 "s3://long-out/run", "--wait", "--timeout", str(timeout)],
                env=wenv, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise RuntimeError(f"produce failed:\n{proc.stderr[-2000:]}\n{worker.log_tail()}")
            after = {p: status_kb(p, "VmHWM") for p in pool if Path(f"/proc/{p}").exists()}
            main_hwm = status_kb(worker.proc.pid, "VmHWM")
            record = json.loads(
                s3.client()
                .get_object(Bucket="long-out", Key=f"run/{long_wav.name}/record.json")["Body"]
                .read()
            )
        finally:
            worker.stop()
    if record["status"] != "ok":
        raise RuntimeError(f"the long recording failed in the worker: {record}")
    child = max(after, key=after.get)
    return {
        "pool_process_peak_gb": after[child] / 1e6,
        "pool_process_after_warmup_gb": warm.get(child, 0) / 1e6,
        "main_process_peak_gb": main_hwm / 1e6,
        "produce_wall_s": wall,
        "n_windows": record["n_windows"],
        "tiles": len(record["outputs"].get("overlay_tiles", [])),
    }


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="echocam-bench-long-"))
    short, long_wav = long_recording(args.minutes, work)
    env = {**os.environ, "ECHOCAM_WEIGHTS": "random", "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "echocam_cli", "run"]
    res: dict = {"minutes": args.minutes, "source": short.name, "bytes": long_wav.stat().st_size}
    res["import_torch_gb"], _ = peak_rss_gb([sys.executable, "-c", "import torch"], env=env)
    res["local_short_gb"], res["local_short_s"] = peak_rss_gb(
        [*cli, str(short), "--out", str(work / "short")], env=env
    )
    res["local_long_gb"], res["local_long_s"] = peak_rss_gb(
        [*cli, str(long_wav), "--out", str(work / "long")], env=env
    )
    record = json.loads((work / "long" / long_wav.name / "record.json").read_text())
    res["n_windows"] = record["n_windows"]
    res["image_width"] = record["image_sizes"]["overlay"][1]
    res["tiles"] = len(record["outputs"].get("overlay_tiles", []))
    res["output_mb"] = (
        sum(p.stat().st_size for p in (work / "long" / long_wav.name).rglob("*") if p.is_file())
        / 1e6
    )
    if not args.skip_worker:
        res["worker"] = worker_peak(long_wav, env=env, work=work, timeout=args.timeout)
    for p in sorted(work.rglob("*"), reverse=True):  # scratch: the WAV and the outputs
        p.unlink() if p.is_file() else p.rmdir()
    work.rmdir()
    return res


def report(res: dict) -> str:
    base = res["local_short_gb"]
    rows = [
        ["import torch", res["import_torch_gb"], "", ""],
        [f"local mode, {res['source']} (baseline)", base, "", f"{res['local_short_s']:.0f} s"],
        [
            f"local mode, {res['minutes']:g} min",
            res["local_long_gb"],
            res["local_long_gb"] - base,
            f"{res['local_long_s']:.0f} s",
        ],
    ]
    if "worker" in res:
        w = res["worker"]
        rows.append(
            ["worker pool process after warm-up", w["pool_process_after_warmup_gb"], "", ""]
        )
        rows.append(
            [
                f"worker pool process, {res['minutes']:g} min",
                w["pool_process_peak_gb"],
                w["pool_process_peak_gb"] - w["pool_process_after_warmup_gb"],
                f"{w['produce_wall_s']:.0f} s",
            ]
        )
        rows.append(["worker main process", w["main_process_peak_gb"], "", ""])
    lines = [
        f"{res['minutes']:g}-minute 44.1 kHz mono WAV ({res['bytes'] / 1e6:.0f} MB), "
        f"{res['n_windows']} windows, images {res['image_width']} px wide in {res['tiles']} "
        f"tiles, outputs {res['output_mb']:.0f} MB",
        C.table(rows, ["process", "peak RSS GB", "over baseline GB", "wall"]),
    ]
    peaks = [res["local_long_gb"]] + (
        [res["worker"]["pool_process_peak_gb"]] if "worker" in res else []
    )
    lines.append(
        f"target: peak <= {TARGET_GB} GB: "
        + C.verdict(max(peaks), TARGET_GB, higher_is_better=False)
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=29.98, help="length of the long recording")
    ap.add_argument("--skip-worker", action="store_true", help="local mode only")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for the worker's run")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    print(C.machine_line(C.machine()), flush=True)
    res = run(args)
    res["machine"] = C.machine()
    print(report(res), flush=True)
    C.write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
