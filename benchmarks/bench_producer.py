"""The producer and the manifest step at bucket scale, against real SeaweedFS and Redis on loopback.

For each size N: N small objects are uploaded under a prefix, then, each in a fresh process
(``produce`` as the CLI runs it, minus interpreter start-up; a real Celery app on the real Redis):

- ``list``: the bare ListObjectsV2 paginator over the prefix, page after page (keys/s), with the
  S3 client echocam uses (timestamps left as strings); ``list-default``: the same with boto3's
  default client (timestamps parsed by dateutil); ``list-frozen``: ``list`` with the objects
  alive before it frozen out of the garbage collector's reach, as ``produce`` does (a control:
  the part of the producer's rate that any lister could have too).  Ratios are
  against ``list``: the listing rate the producer's own client can reach, and also against
  ``list-frozen``;
- ``first``: ``produce`` into an empty output prefix (every key enqueued);
- ``rerun``: ``produce`` into a prefix where every recording is done (records, markers and shards
  written in bulk with the workers' record and marker formats, with the run's fingerprint), the
  done index still all folder markers: what a run cut off before its end leaves (a run that ends
  is compacted by a worker);
- ``compact``: compaction of the done prefix, as a worker runs it when a run ends and as
  ``echocam manifest`` does (index listing + shards; it folds the markers into one segment);
- ``rerun-compacted``: ``produce`` again after ``compact`` (source listing + one segment);
- ``list-index``: the bare paginator over the folded index (one segment object; on SeaweedFS,
  also the walk of the empty folders the index's sources left, one per distinct source folder);
- ``settle``: waits (up to 5 minutes) until SeaweedFS has removed those empty folders itself (its
  filer's empty-folder cleaner runs every 10 s, a folder level at a time), then
  ``rerun-compacted-later`` and ``list-index-later`` measure the same as above: a re-run some
  minutes after the run before it ended, as most re-runs are.

Each child reports its wall time, its peak RSS above its post-import baseline, and the 1-minute
load average when it ended.  The machine is shared: its load drifts within minutes, so each
repeat of ``first`` and of the re-runs follows a bare listing of the same keys, and their ratio
to the listing is also given as the median of those pairs' ratios.

Target: ``produce`` (first run, and a re-run after a run that ended) at >= 0.8 x the bare
listing's keys/s.

    python benchmarks/bench_producer.py [--sizes 10000 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
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
    from echocam.bucket import manifest
    from echocam.bucket.storage import client_factory, open_store
    from echocam.settings import Params, Settings
    from producer.enqueue import produce
    from worker.app import app

    settings = Settings.from_env()
    make = client_factory(settings)
    src = open_store(f"s3://{BUCKET}/in-{n}", client_factory=make)
    out = "first" if what == "first" else "done"
    dst = open_store(f"s3://{BUCKET}/out-{n}-{out}", client_factory=make)
    model = {"arch": "resnet18", "sha256": MODEL_SHA, "weights": "random"}
    client = _default_client(settings) if what == "list-default" else src.client
    if what == "list-frozen":
        gc.freeze()  # what produce does before it lists
    base = _status("VmRSS")
    t0 = time.perf_counter()
    extra: dict = {}
    if what.startswith("list"):  # the bare paginator
        prefix = f"out-{n}-done/_index/" if what.startswith("list-index") else f"in-{n}/"
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix, PaginationConfig={"PageSize": settings.page_size}
        )
        count = sum(len(page.get("Contents", ())) for page in pages)
    elif what in ("first", "rerun", "rerun-compacted", "rerun-compacted-later"):
        res = produce(src, dst, app=app, model=model, params=Params(), settings=settings)
        count = res.recordings + res.skipped
        extra = {"enqueued": res.recordings, "skipped": res.skipped, "tasks": res.tasks}
    elif what == "compact":
        shards = sum(1 for _ in dst.list(under=manifest.SHARDS))
        summary = manifest.compact(dst, page_size=settings.page_size)
        count = summary["recordings"]
        extra = {"shards_read": shards, "index_pages": -(-n // settings.page_size)}
    else:
        raise SystemExit(f"unknown {what}")
    seconds = time.perf_counter() - t0
    return {
        "load_1m": os.getloadavg()[0],
        "what": what,
        "keys": n,
        "count": count,
        "seconds": seconds,
        "keys_per_s": n / seconds,
        "rss_growth_bytes": _status("VmHWM") - base,
        **extra,
    }


def _default_client(settings):
    """boto3's client as anyone would make it (default parsers), same endpoint and options."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )


def upload(s3, n: int) -> None:
    client = s3.client(max_pool_connections=32)

    def put(i: int) -> None:
        key = f"in-{n}/site {i % 97:02d}/day {i % 31:02d}/rec_{i:08d}.wav"
        client.put_object(Bucket=BUCKET, Key=key, Body=f"recording {i}".encode())

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(n)))


def make_done(n: int) -> None:
    """Every recording of in-<n> done in out-<n>-done: a failed record, its marker and one shard
    per task, as a worker writes them (``runner.record_failures``), put in bulk on threads (the
    prefix is empty: no record to read first, no intent to keep)."""
    from echocam.bucket import index, manifest, records
    from echocam.bucket.chunking import chunked
    from echocam.bucket.storage import client_factory, open_store
    from echocam.settings import Params, Settings, fingerprint

    settings = Settings.from_env()
    make = client_factory(settings)
    src = open_store(f"s3://{BUCKET}/in-{n}", client_factory=make)
    dst = open_store(f"s3://{BUCKET}/out-{n}-done", client_factory=make)
    dst.put(index.COMPLETE, b"{}")
    fp = fingerprint(Params(), MODEL_SHA)
    model = {"arch": "resnet18", "sha256": MODEL_SHA, "weights": "random"}

    def done(item) -> index.Stored:
        base = records.new(
            source_key=item.key, size=item.size, etag=item.etag, model=model, fingerprint=fp
        )
        record = records.stamped(records.failed(base, code="empty", message="-"), run_id="bench")
        data = records.dumps(record)
        stored = index.Stored(record, index.digest(data))
        dst.put(record["record_key"], data)
        dst.put(stored.marker_key, b"")
        return stored

    with ThreadPoolExecutor(32) as pool:
        for some in chunked(src.list(), 64 * settings.task_size):
            stored = list(pool.map(done, some))
            list(
                pool.map(
                    lambda c: manifest.write_shard(dst, c), chunked(stored, settings.task_size)
                )
            )


def settle(s3, n: int, *, timeout_s: float = 300) -> float:
    """Seconds until no folder is left under the done index but the segments'."""
    client, t0 = s3.client(), time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        page = client.list_objects_v2(Bucket=BUCKET, Prefix=f"out-{n}-done/_index/", Delimiter="/")
        if all(p["Prefix"].endswith("/_segments/") for p in page.get("CommonPrefixes", ())):
            return time.monotonic() - t0
        time.sleep(5)
    raise RuntimeError(f"the index's empty folders were still there after {timeout_s} s")


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
                if what == "settle":
                    waited = settle(s3, n)
                    print(f"  SeaweedFS removed the index's empty folders in {waited:.0f} s")
                    continue
                repeats = args.repeats if what in REPEATED else 1
                got, pairs = [], []
                for _ in range(repeats):
                    if what in PAIRED:  # the listing just before: the same neighbours' load
                        pairs.append(run_child("list", n, env)["seconds"])
                    got.append(run_child(what, n, env))
                best = min(got, key=lambda r: r["seconds"])  # least disturbed by the neighbours
                best["repeats_seconds"] = [round(r["seconds"], 3) for r in got]
                if pairs:
                    best["paired_list_seconds"] = [round(x, 3) for x in pairs]
                    ratios = sorted(x / r["seconds"] for x, r in zip(pairs, got, strict=True))
                    best["paired_ratios"] = [round(x, 3) for x in ratios]
                    best["paired_ratio_median"] = ratios[len(ratios) // 2]
                rows.append(best)
                print(
                    f"  {what} {n}: {best['seconds']:.2f} s, {best['keys_per_s']:.0f} keys/s, "
                    f"RSS growth {best['rss_growth_bytes'] / 2**20:.1f} MiB",
                    flush=True,
                )
    ratios, frozen, paired = {}, {}, {}
    for n in args.sizes:
        by = {r["what"]: r for r in rows if r["keys"] == n}
        for base, into in (("list", ratios), ("list-frozen", frozen)):
            if base in by:
                rate = by[base]["keys_per_s"]
                into[n] = {w: r["keys_per_s"] / rate for w, r in by.items() if w != base}
        paired[n] = {w: r["paired_ratio_median"] for w, r in by.items() if "paired_ratios" in r}
    return {
        "runs": rows,
        "ratio_to_listing": ratios,
        "ratio_to_frozen_listing": frozen,
        "paired_ratio_to_listing": paired,
    }


def report(res: dict) -> str:
    rows = [
        [r["what"], r["keys"], r["seconds"], r["keys_per_s"], r["rss_growth_bytes"] / 2**20,
         r["load_1m"]]
        for r in res["runs"]
    ]  # fmt: skip
    lines = [C.table(rows, ["path", "keys", "s", "keys/s", "RSS growth MiB", "load"])]
    for n, ratio in res["ratio_to_listing"].items():
        parts = ", ".join(f"{w} {x:.2f}" for w, x in ratio.items())
        lines.append(f"  {n} keys, rate / raw listing rate (best / best): {parts}")
    for n, ratio in res["ratio_to_frozen_listing"].items():
        parts = ", ".join(f"{w} {x:.2f}" for w, x in ratio.items() if not w.startswith("list"))
        lines.append(f"  {n} keys, rate / frozen listing's rate (best / best): {parts}")
    for n, ratio in res["paired_ratio_to_listing"].items():
        parts = ", ".join(f"{w} {x:.2f}" for w, x in ratio.items())
        lines.append(f"  {n} keys, median of (listing just before / repeat): {parts}")
    return "\n".join(lines)


# In this order: compact folds the index that rerun reads, rerun-compacted reads its segment,
# settle waits for the server to remove what compaction emptied.
PATHS = [
    "list", "list-default", "list-frozen", "first", "rerun", "compact", "rerun-compacted",
    "list-index", "settle", "rerun-compacted-later", "list-index-later",
]  # fmt: skip
#: Each repeat of these follows a bare listing of the same keys; their ratio to the listing is
#: the median of the pairs' ratios (the load of the machine's neighbours drifts within minutes).
PAIRED = ("first", "rerun", "rerun-compacted", "rerun-compacted-later")
REPEATED = (
    "list", "list-default", "list-frozen", "first", "rerun", "rerun-compacted", "list-index",
    "rerun-compacted-later", "list-index-later",
)  # fmt: skip


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(child(argv[1], int(argv[2]))))
        return None
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument("--paths", nargs="+", default=PATHS, choices=PATHS)
    ap.add_argument("--repeats", type=int, default=3, help="of the listings and produce runs")
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
