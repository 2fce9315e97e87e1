"""Local mode's host stages on 1 and 2 threads: which of them hold the GIL?

On a GPU host, local mode decodes, encodes and writes on a pool of I/O threads while the device
stage runs; a stage that holds Python's GIL does not get faster with more threads, and slows
the device stage's thread too.  This runs the host stages alone, on the CPU, over the same
recordings with a pool of 1 and of 2 threads (the device stage once beforehand, not timed):

- **decode**: ``Explainer.decode`` (libsndfile, soxr, windows cut);
- **finish**: ``Explainer.finish`` over the device stage's output (stitch or tiles, image and
  NPZ encoding, evidence boxes, records);
- **write**: every output file and the record to a scratch folder;
- **local**: local mode itself (``C.LocalMode``: ``run_chunks`` from a folder to a folder, the
  stages overlapped, the done index and records written) with the device stage replayed: each
  chunk's device output is computed once (warm-up) and handed back again in no time, so what
  is timed is the host's work, as on a GPU host where the device keeps up.

Reported per stage: windows/s on 1 and on 2 threads and the scaling (2-thread / 1-thread: ~1.0
for a stage that holds the GIL, up to ~2 for one that releases it, on 2 free cores), best of
``--repeats`` runs, 1 and 2 threads interleaved so a busy neighbour slows both alike.

    python benchmarks/bench_host_threads.py [--windows 256] [--repeats 5] [--json F]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import torch

from echocam.explain.model import load_model
from echocam.explain.pipeline import Computed, Explainer, Source
from echocam.settings import Params

STAGES = ("decode", "finish", "write", "local")


def files_of(result) -> Iterable[tuple[str, bytes]]:
    """(relative key, bytes) of a result's files and its record."""
    for key, blob in result.files.items():
        if not isinstance(blob, bytes):  # a spooled temporary file
            blob.seek(0)
            blob = blob.read()
        yield key, blob
    yield result.record["record_key"], json.dumps(result.record, default=str).encode()


def write(out: Path, result) -> None:
    for key, data in files_of(result):
        path = out / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def replay_device(ex: Explainer) -> None:
    """Make ``ex.compute`` hand back each chunk's device output computed the first time."""
    real, cache = ex.compute, {}

    def compute(decoded):
        key = tuple(b["source_key"] for b in decoded.bases)
        if key not in cache:
            cache[key] = [(c.parts, c.ended, c.last) for c in real(decoded)]
        return (Computed(decoded, *seg) for seg in cache[key])

    ex.compute = compute


def one_pass(ex: Explainer, sources: list[Source], blocks_: list, out: Path, pool, local) -> dict:
    """Wall seconds of each host stage with ``pool``'s threads."""
    ex.map = pool.map
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    ex.decode(sources)
    t["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = []
    for seg in blocks_:
        results = ex.finish(seg)
    t["finish"] = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    list(pool.map(lambda r: write(out, r), results))
    t["write"] = time.perf_counter() - t0
    if any(r.record["status"] != "ok" for r in results):
        raise RuntimeError("a recording failed")
    local.pool = pool
    t0 = time.perf_counter()
    outcomes = local.run()
    t["local"] = time.perf_counter() - t0
    if any(o.status != "ok" for o in outcomes):
        raise RuntimeError("a recording failed in local mode")
    return t


def run(args: argparse.Namespace) -> dict:
    params = Params()
    paths = C.recordings(Path(args.recordings) if args.recordings else C.SAMPLES)
    chosen = C.pick_recordings(C.window_counts(paths, params), args.windows)
    sources = [Source(f"{i:04d}_{p.name}", p.read_bytes()) for i, p in enumerate(chosen)]
    torch.set_num_threads(2)
    ex = Explainer(load_model("random"), params, device="cpu", batch_size=args.batch)
    decoded = ex.decode(sources)
    n = sum(len(r.windowed.starts) for r in decoded.recordings)
    blocks_ = list(ex.compute(decoded))  # the device stage, once
    pools = {k: ThreadPoolExecutor(k, thread_name_prefix="echocam-io") for k in (1, 2)}
    replay_device(ex)
    local = C.LocalMode(ex, chosen, chunk_size=args.chunk_size, pool=pools[2])
    work = Path(tempfile.mkdtemp(prefix="echocam-threads-"))
    best: dict[int, dict[str, float]] = {k: {} for k in pools}
    try:
        ex.map = pools[2].map
        local.run()  # each chunk's device stage, once (on 2 torch threads)
        torch.set_num_threads(1)
        for pool in pools.values():  # warm-up: imports, allocator, encoders' tables
            one_pass(ex, sources, blocks_, work / "out", pool, local)
        for _ in range(args.repeats):
            for k, pool in pools.items():
                for stage, s in one_pass(ex, sources, blocks_, work / "out", pool, local).items():
                    best[k][stage] = min(best[k].get(stage, s), s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        local.close()
        for pool in pools.values():
            pool.shutdown()
    stages = {
        stage: {
            "windows_per_s_1_thread": n / best[1][stage],
            "windows_per_s_2_threads": n / best[2][stage],
            "scaling": best[1][stage] / best[2][stage],
            "ms_per_window_1_thread": 1000 * best[1][stage] / n,
        }
        for stage in STAGES
    }
    host = {k: sum(best[k][stage] for stage in ("decode", "finish", "write")) for k in pools}
    stages["decode+finish+write"] = {
        "windows_per_s_1_thread": n / host[1],
        "windows_per_s_2_threads": n / host[2],
        "scaling": host[1] / host[2],
        "ms_per_window_1_thread": 1000 * host[1] / n,
    }
    return {
        "benchmark": "host_threads",
        "commit": C.commit(),
        "windows": n,
        "recordings": len(chosen),
        "recording_mix": {p.name: chosen.count(p) for p in dict.fromkeys(chosen)},
        "repeats": args.repeats,
        "machine": C.machine(2),
        "stages": stages,
    }


def report(res: dict) -> str:
    rows = [
        [name, s["ms_per_window_1_thread"], s["windows_per_s_1_thread"],
         s["windows_per_s_2_threads"], s["scaling"]]
        for name, s in res["stages"].items()
    ]  # fmt: skip
    return "\n".join(
        [
            C.machine_line(res["machine"]),
            f"commit {res['commit']}: {res['windows']} windows from {res['recordings']} "
            f"recordings, best of {res['repeats']}",
            C.table(rows, ["stage", "ms/window 1 thr", "win/s 1 thr", "win/s 2 thr", "2/1"]),
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=256, help="5-s windows in the selection")
    ap.add_argument("--recordings", default=None, help="a folder of recordings (default samples/)")
    ap.add_argument("--batch", type=int, default=32, help="windows per forward")
    ap.add_argument("--chunk-size", type=int, default=16, help="local mode's recordings a chunk")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per thread count (best)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    res = run(args)
    print(report(res))
    C.write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
