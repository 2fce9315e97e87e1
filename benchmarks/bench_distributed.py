"""Distributed throughput: 1 vs 2 worker processes against real Redis and a real S3 server.

Starts Redis and SeaweedFS (``devtools.services``), uploads N copies of real 10-s recordings to a
bucket, and for each configuration starts ``echocam worker`` processes (``devtools.stack.Worker``),
runs ``echocam produce ... --wait`` and measures the wall time from the producer's start until the
run's Redis counters say finished.  Default configurations: 1 worker x 1 thread, 2 workers x 1
thread, 1 worker x 2 threads.  CPU seconds of the worker process groups and of the whole machine
(``/proc/stat``) over the same interval say what limits the scaling.

    python benchmarks/bench_distributed.py [--recordings 48] [--task-size 4] [--configs 1x1 2x1 1x2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import soundfile as sf

from devtools.services import RedisServer, SeaweedS3
from devtools.stack import ROOT, Worker

TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """utime + stime of the live processes in process group ``pgid``."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # fields[2] is pgrp (field 5 of stat)
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return sum(parts) - idle, sum(parts)


def ten_second_recordings() -> list[Path]:
    paths = C.recordings()
    ten = [p for p in paths if 9.5 <= sf.info(p).duration <= 10.5]
    return ten or paths


def run_config(
    name: str,
    *,
    workers: int,
    threads: int,
    env: dict[str, str],
    redis_srv: RedisServer,
    service_pids: list[int],
    sha256: str,
    args: argparse.Namespace,
    log_dir: Path,
) -> dict:
    queue = f"bench-{name}"
    wenv = {**env, "ECHOCAM_THREADS": str(threads), "ECHOCAM_QUEUE": queue}
    pool = [
        Worker(wenv, name=f"{name}-w{i}", log_dir=log_dir, args=["--concurrency", "1"])
        for i in range(workers)
    ]
    t_start = time.monotonic()
    for w in pool:
        w.start()
    try:
        for w in pool:
            w.wait_ready()
        ready_s = time.monotonic() - t_start
        time.sleep(1.0)  # let the workers' start-up CPU (imports, warm-up) settle
        r = redis_srv.client()
        before = set(r.scan_iter("echocam:run:*"))
        cpu0 = {w.name: group_cpu_s(w.proc.pid) for w in pool}
        services0 = sum(group_cpu_s(pid) for pid in service_pids)
        busy0, total0 = machine_ticks()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        producer = subprocess.Popen(
            [sys.executable, "-m", "echocam_cli", "produce", "s3://bench-in/recs", "--out",
             f"s3://bench-out/{name}", "--wait", "--timeout", str(args.timeout),
             "--task-size", str(args.task_size), "--model-sha256", sha256],
            env=wenv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        run_key, counters, t_done = None, {}, None
        while t_done is None:
            if producer.poll() is not None and run_key is None:
                break
            if run_key is None:
                new = [k for k in r.scan_iter("echocam:run:*") if k not in before]
                run_key = next((k for k in new if not k.endswith(b":tasks")), None)
            if run_key is not None:
                counters = {k.decode(): int(v) for k, v in r.hgetall(run_key).items()}
                done = counters.get("ok", 0) + counters.get("failed", 0)
                if counters.get("producer_done") and done >= counters.get("enqueued", 0):
                    t_done = time.monotonic()
                    break
            if time.monotonic() - t0 > args.timeout:
                logs = "\n".join(w.log_tail(20) for w in pool)
                raise TimeoutError(
                    f"{name}: not finished after {args.timeout} s: {counters}\n{logs}"
                )
            time.sleep(0.05)
        cpu1 = {w.name: group_cpu_s(w.proc.pid) for w in pool}
        services1 = sum(group_cpu_s(pid) for pid in service_pids)
        busy1, total1 = machine_ticks()
        out, err = producer.communicate(timeout=args.timeout)
        t_exit = time.monotonic()
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if producer.returncode != 0 or t_done is None:
            logs = "\n".join(w.log_tail(20) for w in pool)
            raise RuntimeError(
                f"{name}: produce failed ({producer.returncode}):\n{out}\n{err}\n{logs}"
            )
    finally:
        for w in pool:
            w.stop()
    wall = t_done - t0
    worker_cpu = sum(cpu1[k] - cpu0[k] for k in cpu1)
    producer_cpu = (children1.ru_utime + children1.ru_stime) - (
        children0.ru_utime + children0.ru_stime
    )
    ncpu = os.cpu_count() or 1
    stage_ms = {k[3:]: v for k, v in counters.items() if k.startswith("ms:")}
    return {
        "config": name,
        "workers": workers,
        "threads_per_worker": threads,
        "recordings": counters.get("ok", 0) + counters.get("failed", 0),
        "ok": counters.get("ok", 0),
        "failed": counters.get("failed", 0),
        "windows": counters.get("windows", 0),
        "tasks": counters.get("tasks_enqueued", 0),
        "workers_ready_s": ready_s,
        "wall_s": wall,
        "produce_command_s": t_exit - t0,
        "recordings_per_s": counters.get("ok", 0) / wall,
        "windows_per_s": counters.get("windows", 0) / wall,
        "worker_cpu_s": worker_cpu,
        "worker_cores_busy": worker_cpu / wall,
        "producer_cpu_s": producer_cpu,
        "services_cpu_s": services1 - services0,
        "machine_cores_busy": ncpu * (busy1 - busy0) / max(1, total1 - total0),
        "worker_stage_s": {k: v / 1000 for k, v in stage_ms.items()},
        "produce_stdout_tail": out.strip().splitlines()[-12:],
    }


def run(args: argparse.Namespace) -> dict:
    import torch
    from torchvision.models import resnet18

    from echocam.explain.model import load_model, save_checkpoint

    work = Path(tempfile.mkdtemp(prefix="echocam-bench-dist-"))
    torch.manual_seed(1234)
    ckpt = work / "species.pt"
    species = ["Charadrius ruficapillus", "Chenonetta jubata", "Chlamydera nuchalis"]
    save_checkpoint(ckpt, resnet18(weights=None, num_classes=3).state_dict(), species)
    sha256 = load_model(str(ckpt)).sha256
    sources = ten_second_recordings()
    results = []
    with RedisServer() as redis_srv, SeaweedS3() as s3:
        s3.create_bucket("bench-in")
        s3.create_bucket("bench-out")
        client = s3.client()
        for i in range(args.recordings):
            src = sources[i % len(sources)]
            client.put_object(
                Bucket="bench-in", Key=f"recs/{i:04d}_{src.name}", Body=src.read_bytes()
            )
        env = {
            **os.environ,
            **s3.env(),
            "ECHOCAM_BROKER_URL": redis_srv.url,
            "ECHOCAM_WEIGHTS": str(ckpt),
            "ECHOCAM_BATCH_SIZE": str(args.batch_size),
        }
        for spec in args.configs:
            workers, threads = (int(x) for x in spec.split("x"))
            print(f"  {spec}: {workers} worker(s) x {threads} thread(s) ...", flush=True)
            res = run_config(
                spec,
                workers=workers,
                threads=threads,
                env=env,
                redis_srv=redis_srv,
                service_pids=[redis_srv.pid, s3.pid],
                sha256=sha256,
                args=args,
                log_dir=work,
            )
            results.append(res)
            print(
                f"    {res['wall_s']:.1f} s, {res['recordings_per_s']:.2f} rec/s, "
                f"{res['windows_per_s']:.2f} windows/s",
                flush=True,
            )
    shutil.rmtree(work, ignore_errors=True)  # kept only when something failed: worker logs
    base = results[0]
    for res in results:
        res["speedup_vs_first"] = res["windows_per_s"] / base["windows_per_s"]
    return {
        "recordings": args.recordings,
        "recording_seconds": round(sf.info(sources[0]).duration, 2),
        "task_size": args.task_size,
        "batch_size": args.batch_size,
        "configs": results,
    }


def report(res: dict) -> str:
    rows = []
    for d in res["configs"]:
        rows.append(
            [
                d["config"],
                d["workers"],
                d["threads_per_worker"],
                d["ok"],
                d["windows"],
                d["wall_s"],
                d["recordings_per_s"],
                d["windows_per_s"],
                d["speedup_vs_first"],
                d["worker_cores_busy"],
                d["machine_cores_busy"],
            ]
        )
    header = ["config", "workers", "threads", "ok", "windows", "wall s", "rec/s", "windows/s",
              "x first", "worker cores", "machine cores"]  # fmt: skip
    stages = []
    for d in res["configs"]:
        st = d["worker_stage_s"]
        tot = sum(st.values()) or 1.0
        stages.append(
            f"  {d['config']}: worker stage time "
            + ", ".join(f"{k} {100 * v / tot:.0f} %" for k, v in sorted(st.items()))
            + f"; producer CPU {d['producer_cpu_s']:.1f} s, Redis+S3 CPU "
            + f"{d['services_cpu_s']:.1f} s"
        )
    cores = os.cpu_count() or 1
    base = res["configs"][0]
    for d in res["configs"][1:]:
        ideal = (d["workers"] * d["threads_per_worker"]) / (
            base["workers"] * base["threads_per_worker"]
        )
        stages.append(
            f"  {d['config']} vs {base['config']}: {d['speedup_vs_first']:.2f}x windows/s for "
            f"{ideal:.0f}x the cores asked for; the machine was "
            f"{d['machine_cores_busy']:.2f} of {cores} cores busy (workers "
            f"{d['worker_cores_busy']:.2f}; the rest: producer, Redis, SeaweedFS, other users)"
        )
    return (
        f"{res['recordings']} recordings of {res['recording_seconds']:g} s, task size "
        f"{res['task_size']}, worker batch {res['batch_size']}, {cores} cores\n"
        + C.table(rows, header)
        + "\n"
        + "\n".join(stages)
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recordings", type=int, default=48, help="copies of 10-s recordings")
    ap.add_argument("--task-size", type=int, default=4, help="recordings per task")
    ap.add_argument("--batch-size", type=int, default=32, help="worker windows per forward")
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["1x1", "2x1", "1x2"],
        help="WORKERSxTHREADS per configuration; the first is the baseline of the ratios",
    )
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    res = run(args)
    res["machine"] = C.machine()
    res["machine"]["torch_threads"] = "per config"
    print(C.machine_line(res["machine"]))
    print(report(res))
    C.write_json(args.json, {"benchmark": "distributed", **json.loads(json.dumps(res))})
    return res


if __name__ == "__main__":
    main()
