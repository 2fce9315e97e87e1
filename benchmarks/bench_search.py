"""Embeddings and "more like this": what they cost a run, how fast an exact search is, and how
well it finds the same call type.

- **cost**: local mode over the real recordings (``--copies`` of each) with the default outputs,
  against the same without ``embeddings``, in turns (each run a fresh output directory,
  ``--repeats`` pairs): the median of the pairs' CPU-time ratios, and the output-byte ratio
  (targets: <= 1.03 and <= 1.15).
- **latency**: an exact top-10 search over N synthetic unit vectors (512 float16) stored as the
  run's embeddings.parquet, by echocam's scan (float16 product, float32 refinement) and by the
  candidates: numpy float32, DuckDB ``array_cosine_similarity`` on FLOAT[512] Parquet, and
  pyarrow reading Parquet's list of float16 (the format not chosen); seconds and peak memory
  (target: 1M rows in <= 1 s on 2 cores).
- **quality** (``--quality WORKDIR``, a ``bench_families.py --workdir``): precision@10 from each
  held-out clip's call, with the call-box embedding, the window embedding, and the embedding
  under the call's true box (as ``--like`` draws it), for the call types the model was trained
  on and for two it never saw (tuned families' species).

    python benchmarks/bench_search.py [--rows 1000000 10000000] [--quality /tmp/fam]
        [--json benchmarks/results/search.json]
"""

# ruff: noqa: E501 (each method's code runs as written, in its own interpreter)
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
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from echocam.bucket import embeddings

DIM, TOP = 512, 10
ROW_GROUP = 16384
OUTPUTS_WITHOUT = "spectrogram,overlay,cam,detections"


# -- cost ---------------------------------------------------------------------------------------


def cost(args: argparse.Namespace, work: Path) -> dict:
    """Local mode with and without the embeddings output, in turns."""
    src = work / "in"
    src.mkdir(parents=True)
    for copy in range(args.copies):  # more windows than model loads: the run's time is theirs
        for p in C.recordings()[: args.recordings]:
            shutil.copy(p, src / f"{copy}-{p.name}")
    env = {**os.environ, "ECHOCAM_WEIGHTS": "random", "ECHOCAM_THREADS": str(args.threads)}
    walls: dict[str, list[float]] = {"with": [], "without": []}
    cpus: dict[str, list[float]] = {"with": [], "without": []}
    sizes: dict[str, int] = {}
    for i in range(args.repeats):
        for label in ("without", "with") if i % 2 else ("with", "without"):
            out = work / f"out-{label}-{i}"
            extra = [] if label == "with" else ["--outputs", OUTPUTS_WITHOUT]
            t0, c0 = time.perf_counter(), _children_cpu()
            proc = subprocess.run(
                [sys.executable, "-m", "echocam_cli", "run", str(src), "--out", str(out), *extra],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            walls[label].append(time.perf_counter() - t0)
            cpus[label].append(_children_cpu() - c0)
            if proc.returncode:
                raise SystemExit(proc.stderr)
            sizes[label] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            emb = sum(f.stat().st_size for f in out.rglob("embeddings.parquet"))
            emb += sum(f.stat().st_size for f in (out / embeddings.SHARDS).glob("*"))
            sizes[f"{label}_embeddings"] = emb
            shutil.rmtree(out)
    # CPU seconds (the run's process, all its threads), paired run by run: the machine drifted
    # by more than the embeddings cost over a benchmark's minutes
    time_ratio = float(np.median(np.divide(cpus["with"], cpus["without"])))
    wall_ratio = float(np.median(np.divide(walls["with"], walls["without"])))
    bytes_ratio = sizes["with"] / sizes["without"]
    print(
        f"cost: {len(list(src.iterdir()))} recordings; CPU time with ÷ without embeddings "
        f"{time_ratio:.3f} (median of {args.repeats} pairs run in turns; target <= 1.03; wall "
        f"{wall_ratio:.3f}); output bytes {bytes_ratio:.3f} (target <= 1.15)"
    )
    return {
        "recordings": len(list(src.iterdir())),
        "wall_s": {k: [round(t, 3) for t in v] for k, v in walls.items()},
        "cpu_s": {k: [round(t, 3) for t in v] for k, v in cpus.items()},
        "wall_ratio": round(wall_ratio, 4),
        "time_ratio": round(time_ratio, 4),
        "bytes": sizes,
        "bytes_ratio": round(bytes_ratio, 4),
        "verdict_time": C.verdict(time_ratio, 1.03, higher_is_better=False),
        "verdict_bytes": C.verdict(bytes_ratio, 1.15, higher_is_better=False),
    }


# -- latency ------------------------------------------------------------------------------------


def write_vectors(path: Path, n: int, *, seed: int, fmt: str) -> None:
    """``n`` synthetic unit vectors (non-negative, like pooled ReLU features) as the run's table
    (``fmt`` "echocam"), as FLOAT[512] ("float32", for DuckDB) or as a list of float16."""
    rng = np.random.default_rng(seed)
    writer = None
    for i in range(0, n, ROW_GROUP):
        m = min(ROW_GROUP, n - i)
        v = np.maximum(rng.standard_normal((m, DIM), dtype=np.float32) + 0.5, 0)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        keys = [f"site/{j // 3:08d}.wav" for j in range(i, i + m)]
        if fmt == "echocam":
            cols = {name: [None] * m for name, _ in embeddings.FIELDS}
            cols |= {"source_key": keys, "window_index": [0] * m, "begin_s": [0.0] * m,
                     "end_s": [5.0] * m, "class_name": ["a"] * m, "box": ["call"] * m}  # fmt: skip
            t = embeddings.table(cols, v)
        else:
            value = pa.float32() if fmt == "float32" else pa.float16()
            flat = pa.array(v.ravel().astype(np.float32 if fmt == "float32" else np.float16))
            t = pa.table({"source_key": keys,
                          "vector": pa.FixedSizeListArray.from_arrays(flat, DIM)})  # fmt: skip
            assert t.schema.field("vector").type.value_type == value
        if writer is None:
            codecs = "none"
            if fmt == "echocam":  # as the run's table is written
                codecs = {name: embeddings.COMPRESSION[name] for name in t.schema.names}
            writer = pq.ParquetWriter(path, t.schema, compression=codecs)
        writer.write_table(t, row_group_size=ROW_GROUP)
    writer.close()


def _children_cpu() -> float:
    """User and system CPU seconds of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _in_child(code: str) -> dict:
    """Run ``code`` (which prints "seconds peak_mb") in a fresh interpreter: each method's
    memory is its own."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=C.ROOT / "benchmarks",
    )  # fmt: skip
    seconds, peak = proc.stdout.split()[-2:]
    return {"seconds": round(float(seconds), 4), "peak_mb": round(float(peak), 1)}


def latency(args: argparse.Namespace, work: Path) -> dict:
    out: dict[str, dict] = {}
    query = "np.random.default_rng(9).random(512).astype(np.float32)"
    for n in args.rows:
        paths = {fmt: work / f"{fmt}-{n}.parquet" for fmt in ("float32", "float16list")}
        paths["echocam"] = work / f"run-{n}" / embeddings.NAME  # a run's table
        paths["echocam"].parent.mkdir()
        t0 = time.perf_counter()
        for fmt, path in paths.items():
            if fmt != "float16list" or n <= 1_000_000:  # 12 s a million rows: enough said
                write_vectors(path, n, seed=n, fmt=fmt)
        build = time.perf_counter() - t0
        head = f"import time, resource, numpy as np, torch; torch.set_num_threads({args.threads})\n"
        peak = "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024"
        methods = {
            "baseline: the imports alone": f"print(0.0, {peak})",
            "echocam scan (float16 product + float32 refinement)": f"""
from echocam.bucket.storage import LocalStore
from echocam.search import run_batches, scan
q = {query}
f = lambda: scan(run_batches(LocalStore('{paths["echocam"].parent}')), q, top={TOP})
f(); t0 = time.perf_counter(); f(); print(time.perf_counter() - t0, {peak})""",
            "DuckDB array_cosine_similarity (FLOAT[512])": f"""
import duckdb
q = {query}
con = duckdb.connect(); con.execute("SET threads={args.threads}")
sql = "SELECT source_key, array_cosine_similarity(vector::FLOAT[512], $q::FLOAT[512]) AS s FROM read_parquet('{paths["float32"]}') ORDER BY s DESC LIMIT {TOP}"
f = lambda: con.execute(sql, {{"q": q.tolist()}}).fetchall()
f(); t0 = time.perf_counter(); f(); print(time.perf_counter() - t0, {peak})""",
        }
        if n <= 2_000_000:  # 10M float32 vectors are 20 GB: more than this machine's memory
            methods["numpy float32 in memory (after loading)"] = f"""
import pyarrow.parquet as pq
from echocam.bucket.embeddings import vectors
q = {query}
v = np.concatenate([vectors(b).astype(np.float32) for b in pq.ParquetFile('{paths["echocam"]}', pre_buffer=False).iter_batches()])
f = lambda: np.argpartition(-(v @ q), {TOP})[:{TOP}]
f(); t0 = time.perf_counter(); f(); print(time.perf_counter() - t0, {peak})"""
        if n <= 1_000_000:
            methods["reading Parquet list<float16> alone (rejected format)"] = f"""
import pyarrow.parquet as pq
f = lambda: [b for b in pq.ParquetFile('{paths["float16list"]}', pre_buffer=False).iter_batches(batch_size={ROW_GROUP})]
t0 = time.perf_counter(); f(); print(time.perf_counter() - t0, {peak})"""
        found = {name: _in_child(head + code) for name, code in methods.items()}
        size = paths["echocam"].stat().st_size
        out[str(n)] = {"methods": found, "file_mb": round(size / 1e6, 1),
                       "write_s": round(build, 1)}  # fmt: skip
        for p in paths.values():
            p.unlink(missing_ok=True)
        rows = [[name, r["seconds"], r["peak_mb"]] for name, r in found.items()]
        print(f"\nexact top-{TOP} over {n:,} vectors ({size / 1e6:.0f} MB table)")
        print(C.table(rows, ["method", "seconds", "peak MB"]))
    one = out.get("1000000", {}).get("methods", {})
    ours = next((r["seconds"] for name, r in one.items() if name.startswith("echocam")), None)
    verdict = C.verdict(ours, 1.0, higher_is_better=False) if ours else "not measured"
    return {"by_rows": out, "verdict": verdict}


# -- quality ------------------------------------------------------------------------------------


def quality(args: argparse.Namespace, work: Path) -> dict:
    from devtools import families, more_like_this, synthetic
    from echocam.run.local import run_local
    from echocam.settings import Params, Settings

    wd = Path(args.quality)
    ckpt = wd / "model" / "species.pt"
    src = work / "clips"
    shutil.copytree(wd / "heldout", src, ignore=shutil.ignore_patterns("*.csv"))
    _, held = synthetic.split_recordings(C.recordings())
    unseen = [k for k in families.TUNED if k in ("upsweep", "pulse_trill")]
    clips = more_like_this.write_unseen(src, held, kinds=unseen, per_class=15, seed=0)
    settings = Settings(weights=str(ckpt), threads=args.threads)
    run_local(str(src), str(work / "run"), params=Params(), settings=settings, progress=False,
              explicit=())  # fmt: skip
    boxes = more_like_this.truth_boxes([wd / "heldout" / "calls.csv", src / "calls.csv"])
    assert all(c.name in boxes for c in clips)
    found = {}
    for label in ("call box", "window", "true call box, drawn (--like)"):
        if label.startswith("true"):
            per = more_like_this.precision_drawn(work / "run", src, boxes, k=TOP)
        else:
            per = more_like_this.precision_at_k(work / "run", k=TOP, windows=label == "window")
        trained = [v for s, v in per.items() if s.rsplit("-", 1)[0] not in unseen]
        never = [v for s, v in per.items() if s.rsplit("-", 1)[0] in unseen]
        found[label] = {"trained": round(float(np.mean(trained)), 3),
                        "unseen": round(float(np.mean(never)), 3),
                        "per_species": {s: round(v, 3) for s, v in per.items()}}  # fmt: skip
    rows = [[label, r["trained"], r["unseen"]] for label, r in found.items()]
    print(f"\nprecision@{TOP} from one call (model: {ckpt}; unseen: {', '.join(unseen)})")
    print(C.table(rows, ["embedding", "trained call types", "unseen call types"]))
    return {"checkpoint": str(ckpt), "unseen_families": unseen, "precision_at_10": found}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--repeats", type=int, default=3, help="pairs of runs for the cost")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recordings", type=int, default=None, help="the first N (default: all)")
    ap.add_argument("--copies", type=int, default=4, help="copies of each, for the cost")
    ap.add_argument("--skip", nargs="*", default=[], choices=["cost", "latency"])
    ap.add_argument("--quality", default=None, help="a bench_families.py --workdir")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument(
        "--merge", action="store_true", help="keep the parts of --json's result not run now"
    )
    args = ap.parse_args()
    print(C.machine_line(C.machine(args.threads)))
    result: dict = {"machine": C.machine(args.threads), "args": vars(args)}
    if args.merge and args.json and Path(args.json).is_file():
        kept = json.loads(Path(args.json).read_text())
        result |= {k: kept[k] for k in ("cost", "latency", "quality") if k in kept}
    with tempfile.TemporaryDirectory() as tmp:
        stamp = {"date": C.now(), "commit": C.commit()}  # each part's own, for --merge
        if "cost" not in args.skip:
            result["cost"] = cost(args, Path(tmp) / "cost") | stamp
        if "latency" not in args.skip:
            (Path(tmp) / "latency").mkdir(parents=True)
            result["latency"] = latency(args, Path(tmp) / "latency") | stamp
        if args.quality:
            (Path(tmp) / "quality").mkdir()
            result["quality"] = quality(args, Path(tmp) / "quality") | stamp
    C.write_json(args.json, result)


if __name__ == "__main__":
    main()
