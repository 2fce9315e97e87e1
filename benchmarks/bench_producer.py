"""The producer and the manifest step at bucket scale, against real SeaweedFS and Redis on loopback.

For each size N: N small objects are uploaded under a prefix, then, each in a fresh process
(``produce`` as the CLI runs it, minus interpreter start-up; a real Celery app on the real Redis):

- ``list``: the bare ListObjectsV2 paginator over the prefix, page after page (keys/s);
- ``first``: ``produce`` into an empty output prefix (every key enqueued);
- ``rerun``: ``produce`` into a prefix where every recording is done (records, markers and shards
  written by the workers' own code, ``runner.record_failures``, with the run's fingerprint);
- ``rerun-by-record``: the old decision path as a control: the listing plus one record GET per
  key on ``io_threads`` threads (what ``produce`` did before the done index);
- ``compact``: ``echocam manifest`` on the done prefix (index listing + shards), against
  ``compact-by-record``: listing every record.json and reading each (the old compaction's I/O).

Each child reports its wall time and its peak RSS above its post-import baseline.

    python benchmarks/bench_producer.py [--sizes 10000 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import _common as C

BUCKET = "bench-producer"
MODEL_SHA = "0" * 64


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(what: str, n: int) -> dict:
    from echocam import manifest
    from echocam.chunking import chunked
    from echocam.records import RECORD_NAME
    from echocam.settings import Params, Settings
    from echocam.storage import client_factory, open_store, read_json
    from producer.enqueue import produce
    from worker.app import app

    settings = Settings.from_env()
    make = client_factory(settings)
    src = open_store(f"s3://{BUCKET}/in-{n}", client_factory=make)
    out = {"first": "first", "rerun": "done", "rerun-by-record": "done"}.get(what, "done")
    dst = open_store(f"s3://{BUCKET}/out-{n}-{out}", client_factory=make)
    model = {"arch": "resnet18", "sha256": MODEL_SHA, "weights": "random"}
    base = _status("VmRSS")
    t0 = time.perf_counter()
    extra: dict = {}
    if what == "list":  # the bare paginator, one page after another
        pages = src.client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"in-{n}/", PaginationConfig={"PageSize": settings.page_size}
        )
        count = sum(len(page.get("Contents", ())) for page in pages)
    elif what in ("first", "rerun"):
        res = produce(src, dst, app=app, model=model, params=Params(), settings=settings)
        count = res.recordings + res.skipped
        extra = {"enqueued": res.recordings, "skipped": res.skipped, "tasks": res.tasks}
    elif what == "rerun-by-record":
        count = 0
        with ThreadPoolExecutor(settings.io_threads) as pool:
            listing = src.list(suffixes=settings.extensions, page_size=settings.page_size)
            for some in chunked(listing, settings.page_size):
                found = pool.map(lambda it: read_json(dst, f"{it.key}/{RECORD_NAME}"), some)
                count += sum(1 for r in found if r is not None)
    elif what == "compact":
        shards = sum(1 for _ in dst.list(under=manifest.SHARDS))
        summary = manifest.compact(dst, page_size=settings.page_size)
        count = summary["recordings"]
        extra = {"shards_read": shards, "index_pages": -(-n // settings.page_size)}
    elif what == "compact-by-record":
        count = sum(1 for _ in manifest.iter_records(dst, threads=16))
    else:
        raise SystemExit(f"unknown {what}")
    seconds = time.perf_counter() - t0
    return {
        "what": what,
        "keys": n,
        "count": count,
        "seconds": seconds,
        "keys_per_s": n / seconds,
        "rss_growth_bytes": _status("VmHWM") - base,
        **extra,
    }


def upload(s3, n: int) -> None:
    client = s3.client(max_pool_connections=32)

    def put(i: int) -> None:
        key = f"in-{n}/site {i % 97:02d}/day {i % 31:02d}/rec_{i:08d}.wav"
        client.put_object(Bucket=BUCKET, Key=key, Body=f"recording {i}".encode())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(n)))


def make_done(n: int) -> None:
    """Every recording of in-<n> done in out-<n>-done, by the workers' write path."""
    from echocam import runner
    from echocam.chunking import chunked
    from echocam.index import COMPLETE
    from echocam.settings import Params, Settings, fingerprint
    from echocam.storage import client_factory, open_store

    settings = Settings.from_env()
    make = client_factory(settings)
    src = open_store(f"s3://{BUCKET}/in-{n}", client_factory=make)
    dst = open_store(f"s3://{BUCKET}/out-{n}-done", client_factory=make)
    dst.put(COMPLETE, b"{}")
    fp = fingerprint(Params(), MODEL_SHA)
    model = {"arch": "resnet18", "sha256": MODEL_SHA, "weights": "random"}

    def done(items) -> None:
        runner.record_failures(
            items, dst=dst, model=model, fingerprint=fp, run_id="bench", code="empty", message="-"
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(done, chunked(src.list(), settings.task_size)))


def run_child(what: str, n: int, env: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", what, str(n)],
        capture_output=True, text=True, timeout=3600, check=False, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{what} {n}: child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    from devtools.services import RedisServer, SeaweedS3

    rows = []
    with RedisServer() as redis_srv, SeaweedS3() as s3:
        s3.create_bucket(BUCKET)
        env = {
            **os.environ,
            **s3.env(),
            "ECHOCAM_BROKER_URL": redis_srv.url,
            "ECHOCAM_QUEUE": "bench-producer",
            "PYTHONPATH": str(C.ROOT),
        }
        os.environ.update(s3.env())
        for n in args.sizes:
            t0 = time.perf_counter()
            upload(s3, n)
            print(f"  {n} objects uploaded in {time.perf_counter() - t0:.0f} s", flush=True)
            t0 = time.perf_counter()
            make_done(n)
            print(f"  {n} records written in {time.perf_counter() - t0:.0f} s", flush=True)
            for what in args.paths:
                repeats = args.repeats if what in ("list", "first", "rerun") else 1
                got = [run_child(what, n, env) for _ in range(repeats)]
                best = min(got, key=lambda r: r["seconds"])  # least disturbed by the neighbours
                best["repeats_seconds"] = [round(r["seconds"], 3) for r in got]
                rows.append(best)
                print(
                    f"  {what} {n}: {best['seconds']:.2f} s, {best['keys_per_s']:.0f} keys/s, "
                    f"RSS growth {best['rss_growth_bytes'] / 2**20:.1f} MiB",
                    flush=True,
                )
    ratios = {}
    for n in args.sizes:
        by = {r["what"]: r for r in rows if r["keys"] == n}
        if "list" in by:
            ratios[n] = {
                w: by[w]["keys_per_s"] / by["list"]["keys_per_s"] for w in by if w != "list"
            }
    return {"runs": rows, "ratio_to_listing": ratios}


def report(res: dict) -> str:
    rows = [
        [r["what"], r["keys"], r["seconds"], r["keys_per_s"], r["rss_growth_bytes"] / 2**20]
        for r in res["runs"]
    ]
    lines = [C.table(rows, ["path", "keys", "s", "keys/s", "RSS growth MiB"])]
    for n, ratio in res["ratio_to_listing"].items():
        parts = ", ".join(f"{w} {x:.2f}" for w, x in ratio.items())
        lines.append(f"  {n} keys, rate / raw listing rate: {parts}")
    return "\n".join(lines)


PATHS = ["list", "first", "rerun", "rerun-by-record", "compact", "compact-by-record"]


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(child(argv[1], int(argv[2]))))
        return None
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument("--paths", nargs="+", default=PATHS, choices=PATHS)
    ap.add_argument("--repeats", type=int, default=3, help="of list, first and rerun (best kept)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    res = run(args)
    res["machine"] = C.machine(threads=0)
    print(C.machine_line(res["machine"]))
    print(report(res))
    C.write_json(args.json, {"benchmark": "producer", **res})
    return res


if __name__ == "__main__":
    main()
