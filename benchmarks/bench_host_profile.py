"""Where a GPU host's CPU goes per window, and how it spreads over cores.

Local mode (``run_chunks`` from a folder to a folder, the default outputs) with the device stage
replayed: each chunk's device output is computed once and handed back in no time, so what is
measured is the host's own work, as on a GPU host whose device keeps up.  Two cases: **clips**
(5-s clips cut from the real recordings: one window, one recording each) and **long** (one
30-minute recording: the real recordings end to end, repeated).  Each measurement runs in a
fresh child process that loops local mode for ``--seconds``:

- **cpu_ms_per_window**: the child's CPU time (user + system, all threads) per window, 1 I/O
  thread;
- **stages**: where that time goes: py-spy's samples of a second child, by the nearest echocam
  module on each stack (decode, evidence, images, npz, embeddings, records, writes, reads,
  index, other), as shares of the busy samples times the CPU time;
- **gil_share_of_busy**: the samples of a third child's loop that hold the GIL (``py-spy
  --gil``) over the second child's busy samples (the same seconds at the same rate), and
  **gil_ms_per_window**, that share of the wall time per window: what no second thread of the
  process can overlap;
- **scaling**: windows/s on 2 I/O threads ÷ 2 × 1 thread, and of 2 processes at once ÷ 2 × 1
  process (both ~1.0 when the work spreads perfectly; 0.5 when it does not at all), the medians
  of ``--scaling-rounds`` alternated rounds; for the clips also with their files on tmpfs
  (``/dev/shm``), as a worker's go to the bucket, not through this disk's journal;
- **bucket**: the clips again, read from and written to SeaweedFS on loopback as a worker does
  (``S3Store``: its GETs and PUTs through obstore), against ``bucket-boto3`` (every
  request through boto3, as before), alternated ``--bucket-rounds`` times: CPU-ms per window of
  each (the server's CPU not counted), and their ratio;
- **objects**: objects written per recording, and the CPU time of one PUT of a small object to
  a local store, and to SeaweedFS on loopback through ``S3Store.put`` (obstore) and through a
  bare boto3 ``put_object`` (what ``S3Store.put`` used before), alternated.

    python benchmarks/bench_host_profile.py [--seconds 15] [--clips 64] [--long-minutes 30]
        [--scaling-rounds 3] [--no-profile] [--json F]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C

HERE = Path(__file__).resolve()
TMPFS = Path("/dev/shm")  # memory-backed, where there is one
CLIP_S = 5.0
# stage ← the first echocam module (from the leaf up) on a sample's stack
STAGES = (
    ("evidence", ("explain/localise.py", "encoder.py:_evidence")),
    ("images", ("explain/render.py", "signal/image.py", "Encoder._image")),
    ("npz", ("explain/npz.py", "Encoder._npz")),
    ("embeddings", ("explain/embed.py", "bucket/embeddings.py", "Embeddings.")),
    ("decode", ("signal/audio.py", "signal/frontend.py", "signal/windows.py", "_decode")),
    ("records", ("bucket/records.py", "bucket/detections.py", "Encoder.close", "Encoder.add")),
    ("writes", ("LocalStore.put", "runner.py:_write", "complete.<locals>.write")),
    ("reads", ("LocalStore.get", "md5", "runner.py:fetch")),
    ("index", ("bucket/index.py",)),
)
IDLE = ("Condition.wait", "_worker (concurrent/futures/thread.py:81)", "Event.wait", "Thread.join",
        "_wait_for_tstate_lock", "Condition.notify")  # fmt: skip


# -- the child: local mode in a loop ------------------------------------------------------------


def make_inputs(case: str, folder: Path, size: float) -> list[Path]:
    """The case's recordings as WAV files in ``folder``: ``size`` clips, or one recording of
    ``size`` minutes."""
    import numpy as np

    from echocam.settings import Params
    from echocam.signal import audio

    params = Params()
    sr = params.sample_rate
    waves = [
        audio.decode(p.read_bytes(), **params.decode_options()).samples for p in C.recordings()
    ]
    folder.mkdir(parents=True, exist_ok=True)
    if case != "long":  # clips, and the bucket cases' clips
        n, out = int(CLIP_S * sr), []
        for i in range(int(size)):
            w = waves[i % len(waves)]
            start = (i // len(waves)) * n % max(1, w.shape[0] - n)
            path = folder / f"clip-{i:03d}.wav"
            path.write_bytes(C.wav_bytes(w[start : start + n], sr))
            out.append(path)
        return out
    joined = np.concatenate(waves)
    samples = int(size * 60 * sr)
    reps = int(np.ceil(samples / joined.shape[0]))
    path = folder / f"long-{size:g}min.wav"
    path.write_bytes(C.wav_bytes(np.tile(joined, reps)[:samples], sr))
    return [path]


def child(case: str, threads: int, seconds: float, size: float, outputs: str = "") -> None:
    """Local mode over the case's inputs in a loop, the device stage replayed; prints its
    figures as JSON.  ``outputs``: ``Params.outputs`` (comma-separated; "": the default)."""
    import torch
    from bench_host_threads import replay_device

    from echocam.explain.model import load_model
    from echocam.explain.pipeline import Explainer
    from echocam.settings import Params

    work = Path(tempfile.mkdtemp(prefix="echocam-profile-"))
    stack = contextlib.ExitStack()
    try:
        paths = make_inputs(case, work / "in", size)
        torch.set_num_threads(2)
        params = Params(outputs=tuple(outputs.split(","))) if outputs else Params()
        ex = Explainer(load_model("random"), params, device="cpu", batch_size=32)
        pool = ThreadPoolExecutor(threads, thread_name_prefix="echocam-io")
        ex.map = pool.map
        local = C.LocalMode(ex, paths, chunk_size=16, pool=pool)
        if case.startswith("bucket"):
            bucket(case, stack, local)
        device, chunks = ex.compute, []
        ex.compute = lambda decoded: chunks.append(decoded) or device(decoded)
        replay_device(ex)
        outcomes = local.run()  # the device stage, once per chunk
        windows = sum(o.windows for o in outcomes)
        if local.dst is None:
            objects = sum(1 for p in (local.work / "out").rglob("*") if p.is_file())
        else:
            objects = sum(1 for _ in local.dst.last.list())
        torch.set_num_threads(1)
        local.run()  # warm
        # ext4 mounted with discard trims freed blocks at the journal's commit: a process that
        # ran before this one (another commit's, in an A/B) left work for it, and the second of
        # two runs of the same code wrote files at ~1.8x the CPU.  Committed before each loop.
        os.sync()
        print("ready", flush=True)  # a profiler may attach from here
        runs, wall, cpu = 0, 0.0, 0.0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or runs < 2:
            shutil.rmtree(local.work / "out", ignore_errors=True)  # not timed
            os.sync()
            t0, c0 = time.perf_counter(), time.process_time()
            local.run()
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
            runs += 1
        # the device stage of a CPU worker, once over every chunk, on this thread alone
        c0 = time.thread_time()
        for decoded in chunks:
            for _ in device(decoded):
                pass
        device_cpu = time.thread_time() - c0
        local.close()
        pool.shutdown()
        done = {"runs": runs, "windows": windows, "recordings": len(paths), "objects": objects,
                "wall_s": wall, "cpu_s": cpu, "device_cpu_s": device_cpu}  # fmt: skip
        print(json.dumps(done), flush=True)
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


def bucket(case: str, stack: contextlib.ExitStack, local) -> None:
    """For the bucket cases, ``local`` reads its clips from SeaweedFS (loopback) and writes to a
    fresh prefix there each run (``local.dst.last``: the last one), as a worker does.
    ``bucket-boto3`` sends every request through boto3, as ``S3Store`` did before obstore."""
    from devtools.services import SeaweedS3
    from echocam.bucket.storage import S3Store
    from echocam.settings import Settings

    s3 = stack.enter_context(SeaweedS3())
    s3.create_bucket("bench")
    client = s3.client(max_pool_connections=32)
    if case == "bucket-boto3":
        S3Store._objects = lambda self: None  # as if obstore could not serve: boto3 alone
    local.src = S3Store("s3://bench/in", client)
    for path in sorted((local.work / "in").iterdir()):
        local.src.put(path.name, path.read_bytes())
    local.items = list(local.src.list(suffixes=Settings().extensions))

    def make():
        make.last = S3Store(f"s3://bench/run-{uuid.uuid4().hex}", client)
        return make.last

    local.dst = make


# -- the parent ---------------------------------------------------------------------------------


def spawn(
    case: str,
    threads: int,
    seconds: float,
    size: float,
    *,
    spy: list[str] | None = None,
    outputs: str = "",
    tmpdir: str | None = None,
):
    cmd = [sys.executable, str(HERE), "--child", case, str(threads), str(seconds), str(size)]
    cmd += [outputs] if outputs else []
    if spy:
        cmd = [*spy, "--", *cmd]
    # this checkout's echocam first, not whichever one the environment has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(C.ROOT)])}
    if tmpdir:  # where the child's inputs and outputs go
        env["TMPDIR"] = tmpdir
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=C.ROOT, env=env
    )


def result(proc) -> dict:
    out, _ = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {out[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def stage_of(frames: list[str]) -> str:
    for f in reversed(frames):
        for name, marks in STAGES:
            if any(m in f or m.replace(":", " (") in f for m in marks):
                return name
    return "other"


def profile(case: str, seconds: float, size: float, work: Path, *, gil: bool) -> dict:
    """Samples by stage (``idle``: waiting) of a 1-thread child's loop; with ``gil``, only the
    samples whose thread holds the GIL are busy."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = work / f"{case}-{'gil' if gil else 'all'}.txt"
    proc = spawn(case, 1, seconds + 3, size)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the child did not start")
    spy = [py_spy, "record", "--pid", str(proc.pid), "-d", str(int(seconds)), "-r", "200",
           "-f", "raw", "-o", str(raw), "--idle", *(["--gil"] if gil else [])]  # fmt: skip
    subprocess.run(spy, check=True, capture_output=True, timeout=seconds + 120)
    res = result(proc)
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        if any("rmtree" in f for f in frames):
            continue  # the loop's clean-up between runs, not timed
        if not frames[-1] or frames[-1].startswith(IDLE):
            counts["idle"] += int(n)
        else:
            counts[stage_of(frames)] += int(n)
    return {"samples": dict(counts), "child": res}


def scaling(case: str, size: float, args: argparse.Namespace, *, tmpdir: str | None = None):
    """``--scaling-rounds`` alternated rounds of one child on 1 I/O thread, one on 2 and two
    children at once on 1 each: each round's windows/s of 2 threads ÷ 2 × its 1 thread (and of
    the 2 processes), medians over the rounds; the 1-thread children's median CPU-ms and
    wall-ms per window.  The machine's load moves a single child's rate by a third from one
    minute to the next, so a ratio is taken within its round."""
    rate = lambda r: r["runs"] * r["windows"] / r["wall_s"]  # noqa: E731
    rounds: dict[str, list[float]] = {"threads": [], "processes": [], "cpu_ms": [], "wall_ms": []}
    for _ in range(max(1, args.scaling_rounds)):
        one = result(spawn(case, 1, args.seconds, size, tmpdir=tmpdir))
        two = result(spawn(case, 2, args.seconds, size, tmpdir=tmpdir))
        pair = [spawn(case, 1, args.seconds, size, tmpdir=tmpdir) for _ in range(2)]
        both = [result(p) for p in pair]
        rounds["threads"].append(rate(two) / (2 * rate(one)))
        rounds["processes"].append(sum(rate(r) for r in both) / (2 * rate(one)))
        cpu_ms, wall_ms = per_window(one)
        rounds["cpu_ms"].append(cpu_ms)
        rounds["wall_ms"].append(wall_ms)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    return {
        "windows": one["windows"],
        "recordings": one["recordings"],
        "objects": one["objects"],
        "cpu_ms_per_window": med["cpu_ms"],
        "wall_ms_per_window": med["wall_ms"],
        "threads": med["threads"],
        "processes": med["processes"],
        "windows_per_s_1_thread": 1000 / med["wall_ms"],
        "rounds": rounds,
    }


def put_cpu(n: int) -> dict:
    """CPU seconds per PUT of a 10-kB object: a local store; ``S3Store.put`` (obstore) and a
    bare boto3 ``put_object``, both to SeaweedFS on loopback, alternated in rounds."""
    from devtools.services import SeaweedS3
    from echocam.bucket.storage import LocalStore, S3Store

    body = os.urandom(10_000)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        store = LocalStore(d)
        c0 = time.process_time()
        for i in range(n):
            store.put(f"r{i % 50}/o{i}.bin", body)
        out["local_cpu_ms_per_put"] = 1000 * (time.process_time() - c0) / n
    with SeaweedS3() as s3:
        s3.create_bucket("puts")
        store = S3Store("s3://puts/bench", s3.client())
        client = store.client
        ways = {
            "s3": lambda k: store.put(k, body),
            "boto3": lambda k: client.put_object(Bucket="puts", Key=f"bench/{k}", Body=body),
        }
        for name, put in ways.items():
            for i in range(20):
                put(f"warm/{name}/{i}.bin")
        cpu = dict.fromkeys(ways, 0.0)
        wall = dict.fromkeys(ways, 0.0)
        rounds = 4
        for r in range(rounds):
            for name, put in ways.items():
                c0, t0 = time.process_time(), time.perf_counter()
                for i in range(n // rounds):
                    put(f"{name}/r{r}/{i % 50}/o{i}.bin")
                cpu[name] += time.process_time() - c0
                wall[name] += time.perf_counter() - t0
        for name in ways:
            out[f"{name}_cpu_ms_per_put"] = 1000 * cpu[name] / (rounds * (n // rounds))
            out[f"{name}_wall_ms_per_put"] = 1000 * wall[name] / (rounds * (n // rounds))
    return out


def per_window(child: dict) -> tuple[float, float]:
    """(CPU-ms, wall-ms) per window of a child's loop."""
    n = child["runs"] * child["windows"]
    return 1000 * child["cpu_s"] / n, 1000 * child["wall_s"] / n


def bucket_cases(args: argparse.Namespace) -> dict:
    """The clips written to SeaweedFS, through obstore and through boto3, alternated
    ``--bucket-rounds`` times: medians, and their ratio."""
    if args.bucket_rounds < 1:
        return {}
    runs: dict[str, list[dict]] = {"bucket": [], "bucket-boto3": []}
    for _ in range(args.bucket_rounds):
        for case in runs:
            runs[case].append(result(spawn(case, 1, args.seconds, args.clips)))
    out = {}
    for case, children in runs.items():
        cpu, wall = zip(*(per_window(c) for c in children), strict=True)
        out[case] = {
            "windows": children[0]["windows"],
            "recordings": children[0]["recordings"],
            "objects_per_recording": children[0]["objects"] / children[0]["recordings"],
            "cpu_ms_per_window": statistics.median(cpu),
            "wall_ms_per_window": statistics.median(wall),
            "rounds": {"cpu_ms": cpu, "wall_ms": wall},
        }
    ratio = out["bucket-boto3"]["cpu_ms_per_window"] / out["bucket"]["cpu_ms_per_window"]
    out["bucket"]["boto3_over_obstore_cpu"] = ratio
    return out


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="echocam-profile-"))
    cases = {}
    try:
        for case, size in (("clips", args.clips), ("long", args.long_minutes)):
            sc = scaling(case, size, args)
            cases[case] = {
                "windows": sc["windows"],
                "recordings": sc["recordings"],
                "objects_per_recording": sc["objects"] / sc["recordings"],
                "cpu_ms_per_window": sc["cpu_ms_per_window"],
                "wall_ms_per_window": sc["wall_ms_per_window"],
                "scaling_2_threads": sc["threads"],
                "scaling_2_processes": sc["processes"],
                "windows_per_s_1_thread": sc["windows_per_s_1_thread"],
                "scaling_rounds": sc["rounds"],
            }
            if case == "clips" and TMPFS.is_dir():
                # a worker writes to the bucket: the clips' eight files a recording without
                # this disk's journal (tmpfs), the spread over cores of the work alone
                sc = scaling(case, size, args, tmpdir=str(TMPFS))
                drop = ("windows", "recordings", "objects")
                cases[case]["tmpfs"] = {k: v for k, v in sc.items() if k not in drop}
            cpu_ms, wall_ms = cases[case]["cpu_ms_per_window"], cases[case]["wall_ms_per_window"]
            if not args.profile:
                continue
            prof = profile(case, args.seconds, size, work, gil=False)
            busy = {k: v for k, v in prof["samples"].items() if k != "idle"}
            total = sum(busy.values())
            gil = profile(case, args.seconds, size, work, gil=True)
            gil_busy = sum(v for k, v in gil["samples"].items() if k != "idle")
            sampled = max(1, total + prof["samples"].get("idle", 0))
            cases[case] |= {
                "stages_ms_per_window": {
                    k: cpu_ms * v / total for k, v in sorted(busy.items(), key=lambda kv: -kv[1])
                },
                # both profiles sample the same seconds of the loop at the same rate
                "gil_share_of_busy": gil_busy / max(1, total),
                "gil_ms_per_window": wall_ms * gil_busy / sampled,
                "samples": {"all": prof["samples"], "gil": gil["samples"]},
            }
        cases |= bucket_cases(args)
        puts = put_cpu(args.puts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "host_profile",
        "date": C.now(),
        "commit": C.commit(),
        "machine": C.machine(1),
        "args": vars(args),
        "cases": cases,
        "puts": puts,
        "note": "py-spy samples at 200 Hz; stages are shares of busy samples times the CPU time "
        "(threads' sampling in one process); the GIL share counts samples whose thread holds it",
    }


def report(res: dict) -> str:
    lines = [C.machine_line(res["machine"]), f"commit {res['commit']}"]
    for case, r in res["cases"].items():
        if case.startswith("bucket"):
            lines.append(
                f"\n{case}: {r['windows']} clips to SeaweedFS, {r['objects_per_recording']:.1f} "
                f"objects each; {r['cpu_ms_per_window']:.2f} CPU-ms per window "
                f"({r['wall_ms_per_window']:.2f} wall)"
            )
            continue
        if "stages_ms_per_window" not in r:
            lines.append(f"\n{case}: {r['cpu_ms_per_window']:.2f} CPU-ms per window (no profile)")
            continue
        lines.append(
            f"\n{case}: {r['windows']} windows, {r['recordings']} recordings, "
            f"{r['objects_per_recording']:.1f} objects each; {r['cpu_ms_per_window']:.2f} CPU-ms "
            f"per window ({r['wall_ms_per_window']:.2f} wall); the GIL held in "
            f"{100 * r['gil_share_of_busy']:.0f} % of the busy samples; scaling 2 threads "
            f"{r['scaling_2_threads']:.2f}, 2 processes {r['scaling_2_processes']:.2f}"
        )
        lines.append(C.table([[k, v] for k, v in r["stages_ms_per_window"].items()],
                             ["stage", "CPU-ms/window"]))  # fmt: skip
    p = res["puts"]
    lines.append(f"\nPUT of 10 kB: local {p['local_cpu_ms_per_put']:.3f} CPU-ms; to SeaweedFS, "
                 f"S3Store.put {p['s3_cpu_ms_per_put']:.2f} CPU-ms ({p['s3_wall_ms_per_put']:.2f} "
                 f"wall), bare boto3 {p['boto3_cpu_ms_per_put']:.2f} CPU-ms "
                 f"({p['boto3_wall_ms_per_put']:.2f} wall)")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]), float(argv[3]), float(argv[4]), *argv[5:6])
        return None
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="each child's timed loop")
    ap.add_argument("--clips", type=int, default=64, help="5-s clips in the clips case")
    ap.add_argument("--long-minutes", type=float, default=30.0, help="the long recording")
    ap.add_argument(
        "--scaling-rounds", type=int, default=3, help="alternated rounds of 1, 2 threads, 2 procs"
    )
    ap.add_argument("--puts", type=int, default=300, help="PUTs timed per store")
    ap.add_argument(
        "--bucket-rounds", type=int, default=2, help="alternated rounds to SeaweedFS (0: none)"
    )
    ap.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the stages and the GIL's share, by py-spy (pip install py-spy)",
    )
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    res = run(args)
    print(report(res))
    C.write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
