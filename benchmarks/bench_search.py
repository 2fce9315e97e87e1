"""Embeddings and "more like this": what they cost a run, how fast an exact search is, and how
well it finds the same call type.

- **cost**: local mode over the real recordings (``--copies`` of each) with the default outputs,
  against the same without ``embeddings``, in turns (each run a fresh output directory,
  ``--repeats`` pairs): the median of the pairs' CPU-time ratios, and the output-byte ratio
  (targets: <= 1.03 and <= 1.15).
- **host cost**: the same difference, parts timed alone: the host's CPU per window with and
  without ``embeddings``, the device stage replayed (``bench_host_profile.py``'s children,
  ``--host-rounds`` pairs in turns), and the device stage's CPU per window on the CPU, so the
  share of a CPU worker's time and of a GPU host's work.
- **latency**: an exact top-10 search over N synthetic unit vectors (512 float16) stored as the
  run's embeddings.parquet, by echocam's scan (float16 product, float32 refinement) and by the
  candidates: numpy float32, DuckDB ``array_cosine_similarity`` on FLOAT[512] Parquet, and
  pyarrow reading Parquet's list of float16 (the format not chosen); and the libraries with
  indexes, LanceDB (flat, IVF_PQ), usearch (exact, HNSW) and FAISS (flat, IVF, HNSW), with
  their build time and recall@10 against the exact answer (``pip install -e '.[indexes]'``
  first; a library missing is recorded as skipped); seconds and peak memory (target: 1M rows in
  <= 1 s on 2 cores).
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
    os.sync()  # the copies' writes, before the first run
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
            # ext4 with discard trims freed blocks at the journal's next commit, inside whatever
            # runs next (bench_host_profile.py): here, the next run of the pair
            os.sync()
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


def host_cost(args: argparse.Namespace) -> dict:
    """The embeddings' share of a worker's work, parts timed alone: the host's CPU per window
    with and without them, the device stage replayed (``bench_host_profile.py``'s clips case,
    one child each, ``--host-rounds`` pairs in turns), and the CPU device stage per window
    (the forward, CAMs and maps, one thread; it is the same work either way but for the
    embeddings' pooling, a few µs).  The children work on tmpfs (/dev/shm) where there is
    one: on disk, the journal's work moved a child's CPU per window by +-20 %, more than the
    difference measured."""
    import bench_host_profile as H

    tmpdir = str(H.TMPFS) if H.TMPFS.is_dir() else None

    cpu: dict[str, list[float]] = {"with": [], "without": []}
    device: list[float] = []
    for i in range(args.host_rounds):
        for label in ("without", "with") if i % 2 else ("with", "without"):
            outputs = "" if label == "with" else OUTPUTS_WITHOUT
            child = H.spawn(
                "clips", 1, args.host_seconds, args.host_clips, outputs=outputs, tmpdir=tmpdir
            )
            got = H.result(child)
            cpu[label].append(H.per_window(got)[0])
            if label == "with":
                device.append(1000 * got["device_cpu_s"] / got["windows"])
    ratios = np.divide(cpu["with"], cpu["without"])
    host_ratio = float(np.median(ratios))
    with_ms, without_ms = float(np.median(cpu["with"])), float(np.median(cpu["without"]))
    device_ms = float(np.median(device))
    # a CPU worker does the device stage and the host's work: the embeddings' share of the two
    cpu_run_ratio = (device_ms + with_ms) / (device_ms + without_ms)
    print(
        f"host cost: {with_ms:.2f} against {without_ms:.2f} CPU-ms a window, x {host_ratio:.3f} "
        f"(pairs {ratios.min():.3f}-{ratios.max():.3f}; a GPU host's work); device stage on the "
        f"CPU {device_ms:.1f} ms a window: a CPU worker's time x {cpu_run_ratio:.3f}"
    )
    return {
        "clips": args.host_clips,
        "tmpdir": tmpdir,
        "host_cpu_ms_per_window": {k: [round(v, 4) for v in vs] for k, vs in cpu.items()},
        "device_cpu_ms_per_window": [round(v, 3) for v in device],
        "host_ratio": round(host_ratio, 4),
        "cpu_run_ratio": round(cpu_run_ratio, 4),
        "verdict_cpu_run": C.verdict(cpu_run_ratio, 1.03, higher_is_better=False),
        "verdict_host": C.verdict(host_ratio, 1.03, higher_is_better=False),
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


def _in_child(code: str, *, timeout_s: float | None = None) -> dict:
    """Run ``code`` (which prints "seconds peak_mb", or a JSON object as its last line) in a fresh
    interpreter: each method's memory is its own.  One that runs past ``timeout_s`` is stopped
    and reported as such."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            cwd=C.ROOT / "benchmarks", timeout=timeout_s,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"skipped": f"stopped: not done within {timeout_s:g} s on this machine"}
    except subprocess.CalledProcessError as e:
        return {"skipped": f"failed: {e.stderr.strip().splitlines()[-1][:300]}"}
    last = proc.stdout.strip().splitlines()[-1]
    if last.startswith("{"):
        return json.loads(last)
    seconds, peak = last.split()[-2:]
    return {"seconds": round(float(seconds), 4), "peak_mb": round(float(peak), 1)}


# The index candidates (issue 28): each in its own interpreter, over the same vectors read from
# the run's table (float16; float32 where the library takes no other), built, then asked the
# queries one at a time.  Latency: the median of LAT_QUERIES single queries after one warm-up;
# recall@10 against the exact answer (float32 brute force) over all QUERIES.
QUERIES, LAT_QUERIES = 100, 10
INDEX_PRELUDE = """
import json, pyarrow as pa, pyarrow.parquet as pq
from echocam.bucket.embeddings import vectors
Q = np.load('{work}/queries.npy'); TRUTH = np.load('{work}/truth-{n}.npy')
PEAK = lambda: round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
def load16():
    return np.concatenate([vectors(b) for b in pq.ParquetFile('{table}', pre_buffer=False).iter_batches()])
def recall(ids, k=len(Q)):
    return round(float(np.mean([len(set(map(int, a[:10])) & set(map(int, b))) / 10 for a, b in zip(ids, TRUTH[:k])])), 4)
def timed(f, q=Q[:{lat}]):
    f(q[0]); ts = []
    for x in q:
        t0 = time.perf_counter(); f(x); ts.append(time.perf_counter() - t0)
    return round(float(np.median(ts)), 4)
def sweep(name, values, set_, f):
    out = []
    for v in values:  # a setting per row: the first with recall >= 0.95 is the one quoted
        set_(v); ids = [f(q) for q in Q]
        out.append(dict(setting=f'{{name}}={{v}}', recall_at_10=recall(ids), seconds=timed(f)))
        if out[-1]['recall_at_10'] >= 0.95: break
    return out
def report(build_s, seconds=None, recall_at_10=None, sweep=None, **kw):
    r = dict(build_s=round(build_s, 2), seconds=seconds, recall_at_10=recall_at_10, peak_mb=PEAK(), **kw)
    if sweep:
        ok = [s for s in sweep if s['recall_at_10'] >= 0.95]
        pick = ok[0] if ok else max(sweep, key=lambda s: s['recall_at_10'])
        r.update(seconds=pick['seconds'], recall_at_10=pick['recall_at_10'], setting=pick['setting'], sweep=sweep)
    print(json.dumps(r))
"""
INDEXES = {
    "LanceDB flat search (no index; float16)": """
import lancedb
v = load16(); t0 = time.perf_counter()
db = lancedb.connect('{work}/lance-flat-{n}')
t = pa.table({{'id': pa.array(np.arange(len(v))), 'vector': pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 512)}})
del v
tb = db.create_table('t', t); del t; build = time.perf_counter() - t0
f = lambda q: tb.search(q).metric('dot').limit(10).select(['id']).to_arrow()['id'].to_numpy()
report(build, seconds=timed(f), recall_at_10=recall([f(q) for q in Q[:{lat}]], {lat}), note='build: writing the Lance table')""",
    "LanceDB IVF_PQ index (float16; approximate)": """
import lancedb
from lancedb.index import IvfPq
v = load16()
db = lancedb.connect('{work}/lance-ivf-{n}')
tb = db.create_table('t', pa.table({{'id': pa.array(np.arange(len(v))), 'vector': pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 512)}}))
del v; t0 = time.perf_counter()
tb.create_index('vector', config=IvfPq(distance_type='dot', num_partitions=256, num_sub_vectors=64))
build = time.perf_counter() - t0
s = dict(nprobes=32)
f = lambda q: tb.search(q).metric('dot').nprobes(s['nprobes']).refine_factor(10).limit(10).select(['id']).to_arrow()['id'].to_numpy()
report(build, sweep=sweep('nprobes (refine 10)', [32, 128], lambda x: s.update(nprobes=x), f), note='256 partitions, 64 sub-vectors')""",
    "usearch exact (brute force, float16)": """
from usearch.index import search, MetricKind
v = load16()
f = lambda q: search(v, q.astype(np.float16), 10, MetricKind.IP, exact=True, threads={threads}).keys
report(0.0, seconds=timed(f), recall_at_10=recall([f(q) for q in Q[:{lat}]], {lat}))""",
    "usearch HNSW (float16; approximate)": """
from usearch.index import Index
v = load16(); t0 = time.perf_counter()
ix = Index(ndim=512, metric='ip', dtype='f16', connectivity=16, expansion_add=128)
ix.add(np.arange(len(v)), v, threads={threads}); build = time.perf_counter() - t0; del v
def set_(e): ix.expansion_search = e
f = lambda q: ix.search(q.astype(np.float16), 10).keys
report(build, sweep=sweep('expansion_search', [64, 256, 1024], set_, f), note='connectivity 16, expansion_add 128')""",
    "FAISS IndexFlatIP (exact, float32)": """
import faiss; faiss.omp_set_num_threads({threads})
v = load16(); t0 = time.perf_counter()
ix = faiss.IndexFlatIP(512)
for i in range(0, len(v), 65536): ix.add(v[i:i + 65536].astype(np.float32))
build = time.perf_counter() - t0; del v
f = lambda q: ix.search(q[None], 10)[1][0]
report(build, seconds=timed(f), recall_at_10=recall([f(q) for q in Q[:{lat}]], {lat}), note='build: copying the vectors in as float32')""",
    "FAISS HNSW32 (float32; approximate)": """
import faiss; faiss.omp_set_num_threads({threads})
v = load16(); t0 = time.perf_counter()
ix = faiss.IndexHNSWFlat(512, 32, faiss.METRIC_INNER_PRODUCT)
for i in range(0, len(v), 65536): ix.add(v[i:i + 65536].astype(np.float32))
build = time.perf_counter() - t0; del v
def set_(e): ix.hnsw.efSearch = e
f = lambda q: ix.search(q[None], 10)[1][0]
report(build, sweep=sweep('efSearch', [64, 256, 1024], set_, f), note='efConstruction 40')""",
    "FAISS IVF1024,Flat (float32; approximate)": """
import faiss; faiss.omp_set_num_threads({threads})
v = load16(); t0 = time.perf_counter()
ix = faiss.IndexIVFFlat(faiss.IndexFlatIP(512), 512, 1024, faiss.METRIC_INNER_PRODUCT)
ix.train(v[np.random.default_rng(0).choice(len(v), min(len(v), 65536), replace=False)].astype(np.float32))
for i in range(0, len(v), 65536): ix.add(v[i:i + 65536].astype(np.float32))
build = time.perf_counter() - t0; del v
def set_(p): ix.nprobe = p
f = lambda q: ix.search(q[None], 10)[1][0]
report(build, sweep=sweep('nprobe', [16, 64, 256], set_, f), note='trained on 65,536 of the vectors')""",
}


def write_truth(work: Path, table: Path, n: int) -> None:
    """QUERIES unit query vectors like the stored ones (once), and their exact top 10 over the
    ``n`` vectors of ``table`` (float32 products), for the candidates' recall."""
    import torch

    qpath = work / "queries.npy"
    if not qpath.exists():
        q = np.maximum(
            np.random.default_rng(9).standard_normal((QUERIES, DIM), np.float32) + 0.5, 0
        )
        np.save(qpath, q / np.linalg.norm(q, axis=1, keepdims=True))
    q = torch.from_numpy(np.load(qpath))
    best_s = torch.full((QUERIES, TOP), -np.inf)
    best_i = torch.zeros((QUERIES, TOP), dtype=torch.long)
    at = 0
    for b in pq.ParquetFile(table, pre_buffer=False).iter_batches(batch_size=ROW_GROUP):
        s = q @ torch.from_numpy(embeddings.vectors(b).astype(np.float32)).T
        i = torch.arange(at, at + b.num_rows).expand(QUERIES, -1)
        s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
        best_s, pick = s.topk(TOP, dim=1)
        best_i = i.gather(1, pick)
        at += b.num_rows
    np.save(work / f"truth-{n}.npy", best_i.numpy())


def _index_skip(name: str, n: int) -> str | None:
    """Why ``name`` is not run at ``n`` rows, if it is not."""
    if "IVF_PQ" in name:
        return (
            "not built: over 90 s at 20,000 rows on this machine (stopped; 114 s with 64 "
            "partitions), so a million rows' build is not cheap"
        )
    if n > 2_000_000 and "float32" in name:
        return "float32 only: 10M x 512 float32 is 20 GB, over this machine's 23 GiB with the rest"
    if n > 2_000_000 and ("HNSW" in name or "IVF" in name):
        return "not built: the build grows with the rows, already minutes at 1M on 2 cores"
    return None


def _chosen(name: str, wanted: list[str] | None) -> bool:
    return not wanted or any(w.lower() in name.lower() for w in wanted)


def latency(args: argparse.Namespace, work: Path, kept: dict | None = None) -> dict:
    """Exact top-10 by each method, and the index candidates' build, latency and recall.  With
    ``--methods``, only those named run; ``kept`` (--merge) keeps the earlier figures of the
    methods and rows not run now."""
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
        methods = {k: v for k, v in methods.items() if _chosen(k, args.methods)}
        found = {name: _in_child(head + code) for name, code in methods.items()}
        write_truth(work, paths["echocam"], n)
        for name, code in INDEXES.items():
            if not _chosen(name, args.methods):
                continue
            why = _index_skip(name, n)
            prelude = INDEX_PRELUDE.format(work=work, n=n, table=paths["echocam"], lat=LAT_QUERIES)
            code = code.format(work=work, n=n, threads=args.threads, lat=LAT_QUERIES)
            found[name] = (
                {"skipped": why}
                if why
                else _in_child(head + prelude + code, timeout_s=args.index_timeout)
            )
            for d in work.glob(f"lance-*-{n}"):
                shutil.rmtree(d)
            print(f"  {name}: {found[name]}", flush=True)
        earlier = (kept or {}).get("by_rows", {}).get(str(n), {}).get("methods", {})
        found = {**earlier, **found}  # --merge: the earlier methods' order, today's figures
        size = paths["echocam"].stat().st_size
        out[str(n)] = {"methods": found, "file_mb": round(size / 1e6, 1),
                       "write_s": round(build, 1)}  # fmt: skip
        for p in paths.values():
            p.unlink(missing_ok=True)
        rows = [[name, r.get("seconds"), r.get("peak_mb"), r.get("build_s"), r.get("recall_at_10"),
                 r.get("skipped", "")] for name, r in found.items()]  # fmt: skip
        print(f"\ntop-{TOP} over {n:,} vectors ({size / 1e6:.0f} MB table)")
        print(C.table(rows, ["method", "seconds", "peak MB", "build s", "recall@10", "skipped"]))
    for n, found in (kept or {}).get("by_rows", {}).items():  # --merge: the rows not run now
        out.setdefault(n, found)
    out = dict(sorted(out.items(), key=lambda kv: int(kv[0])))
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
    for label in ("detection's box (activity map)", "window", "true call box, drawn (--like)"):
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
    ap.add_argument("--skip", nargs="*", default=[], choices=["cost", "host", "latency"])
    ap.add_argument("--host-rounds", type=int, default=4, help="pairs of host children")
    ap.add_argument("--host-seconds", type=float, default=10.0, help="each host child's loop")
    ap.add_argument("--host-clips", type=int, default=64, help="5-s clips of the host children")
    ap.add_argument("--quality", default=None, help="a bench_families.py --workdir")
    ap.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="latency: only the methods whose names hold one of these (default: all)",
    )
    ap.add_argument(
        "--index-timeout",
        type=float,
        default=420.0,
        help="seconds an index candidate may take, build and queries (then stopped)",
    )
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument(
        "--merge", action="store_true", help="keep the parts of --json's result not run now"
    )
    args = ap.parse_args()
    print(C.machine_line(C.machine(args.threads)))
    result: dict = {"machine": C.machine(args.threads), "args": vars(args)}
    if args.merge and args.json and Path(args.json).is_file():
        kept = json.loads(Path(args.json).read_text())
        parts = ("cost", "host_cost", "latency", "quality", "shards")
        result |= {k: kept[k] for k in parts if k in kept}
    with tempfile.TemporaryDirectory() as tmp:
        stamp = {"date": C.now(), "commit": C.commit()}  # each part's own, for --merge
        if "cost" not in args.skip:
            result["cost"] = cost(args, Path(tmp) / "cost") | stamp
        if "host" not in args.skip:
            result["host_cost"] = host_cost(args) | stamp
        if "latency" not in args.skip:
            (Path(tmp) / "latency").mkdir(parents=True)
            earlier = result.get("latency") if args.merge else None
            result["latency"] = latency(args, Path(tmp) / "latency", earlier) | stamp
        if args.quality:
            (Path(tmp) / "quality").mkdir()
            result["quality"] = quality(args, Path(tmp) / "quality") | stamp
    C.write_json(args.json, result)


if __name__ == "__main__":
    main()
