"""How ``echocam search --distributed`` grows with the number of parts (issue 28).

Starts Redis and SeaweedFS (``devtools.services``) and ``--workers`` real Celery workers
(``devtools.stack.Worker``, one process and one thread each), uploads ``--rows`` synthetic unit
vectors as a run's embeddings.parquet (``bench_search.write_vectors``, row groups of 16,384 rows)
with a run.json, and times ``echocam.api.search(..., distributed=True, parts=P)`` for each P: the
median wall time of ``--repeats`` searches, after one warm-up.  For reference, the same search
without ``distributed`` (the caller scans the table by ranged GETs) and echocam's scan of the same
table on local disk.  Every answer is checked against the local one.

On this 2-core machine with two workers the parts cannot run faster than the cores: what the
figures show is the overhead each part adds (a Celery task, the reply on Redis, its ranged GETs
of the table's footer and row groups), not the speed-up more machines would bring.

    python benchmarks/bench_search_shards.py [--rows 1000000] [--parts 1 2 4 8 16]
        [--json benchmarks/results/search.json]   # merged in as its "shards" part
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import _common as C
from bench_search import write_vectors

from devtools.services import RedisServer, SeaweedS3
from devtools.stack import Worker
from echocam.bucket import embeddings
from echocam.bucket.detections import detection_id

RUN = "s3://runs/synthetic"


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    fn()  # warm-up: connections, the workers' first task
    times, answer = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        answer = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="merge the result into this file as 'shards'")
    args = ap.parse_args()
    print(C.machine_line(C.machine(1)))
    from echocam import api
    from echocam.bucket.storage import LocalStore
    from echocam.search import run_batches, scan

    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis_srv, SeaweedS3() as s3:
        local = Path(tmp) / "run"
        local.mkdir()
        t0 = time.perf_counter()
        write_vectors(local / embeddings.NAME, args.rows, seed=args.rows, fmt="echocam")
        # what search reads of run.json: the model's sha256 (the runs must share one model)
        run_json = {"model": {"sha256": "synthetic", "weights": "random"}, "synthetic": True}
        (local / "run.json").write_text(json.dumps(run_json))
        s3.create_bucket("runs")
        client = s3.client()
        for name in (embeddings.NAME, "run.json"):
            client.upload_file(str(local / name), "runs", f"synthetic/{name}")
        print(f"{args.rows:,} rows written and uploaded in {time.perf_counter() - t0:.0f} s")
        env = {**s3.env(), "ECHOCAM_BROKER_URL": redis_srv.url, "ECHOCAM_THREADS": "1",
               "ECHOCAM_QUEUE": "bench-search-shards", "ECHOCAM_WEIGHTS": "random"}  # fmt: skip
        os.environ.update(env)  # the caller's settings (Settings.from_env), the workers' too
        workers = [
            Worker(
                {**os.environ}, name=f"shards{i}", log_dir=Path(tmp), args=["--concurrency", "1"]
            )
            for i in range(args.workers)
        ]
        try:
            for w in workers:
                w.start()
            for w in workers:
                w.wait_ready()
            qid = detection_id("site/00000000.wav", 0.0, "a")  # the table's first row
            query = dict(like_detection=qid, top=10)

            def answer(df) -> list:
                return list(zip(df["source_key"], df["similarity"].round(6), strict=True))

            ref_s, ref_t, ref = timed(
                lambda: scan(run_batches(LocalStore(str(local))), _first_vector(local), top=11),
                args.repeats,
            )
            s3_s, s3_t, on_s3 = timed(lambda: api.search(RUN, **query), args.repeats)
            expected = answer(on_s3)
            found = {}
            for p in args.parts:
                med, times, got = timed(
                    lambda p=p: api.search(RUN, **query, distributed=True, parts=p), args.repeats
                )
                assert answer(got) == expected, f"{p} parts: another answer than the local search"
                found[str(p)] = {"median_s": round(med, 3), "seconds": [round(t, 3) for t in times]}
                print(f"  {p:>3} parts: {med:.2f} s (median of {args.repeats})", flush=True)
        finally:
            for w in workers:
                w.stop()
    groups = -(-args.rows // 16384)
    rows = [["local disk, echocam scan (no query lookup)", round(ref_s, 3)],
            ["S3, the caller scans (ranged GETs)", round(s3_s, 3)]]  # fmt: skip
    rows += [[f"S3, --distributed --parts {p}", r["median_s"]] for p, r in found.items()]
    print(f"\nsearch over {args.rows:,} rows ({groups} row groups), {args.workers} workers")
    print(C.table(rows, ["how", "median s"]))
    result = {
        "rows": args.rows,
        "row_groups": groups,
        "workers": args.workers,
        "repeats": args.repeats,
        "local_scan_s": round(ref_s, 3),
        "s3_caller_scan_s": round(s3_s, 3),
        "by_parts": found,
        "note": (
            f"{args.workers} workers of one process and one thread each on this 2-core machine, "
            "with Redis, SeaweedFS and the caller beside them: the parts cannot run faster than "
            "the cores, so the figures show each part's overhead (a Celery task, its reply on "
            "Redis, ranged GETs of the table's footer and row groups), not a speed-up. Each "
            "search also reads the query's stored vector (the table's first row group) and "
            "run.json from S3 first."
        ),
        "machine": C.machine(1),
        "date": C.now(),
        "commit": C.commit(),
    }
    if args.json:
        path = Path(args.json)
        data = json.loads(path.read_text()) if path.is_file() else {"benchmark": "search"}
        data["shards"] = result
        C.write_json(path, data)


def _first_vector(run: Path):
    import pyarrow.parquet as pq

    first = next(pq.ParquetFile(run / embeddings.NAME).iter_batches(batch_size=1))
    return embeddings.vectors(first)[0]


if __name__ == "__main__":
    main()
