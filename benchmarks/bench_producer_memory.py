"""Producer memory stays flat as the number of keys grows (10k vs 100k keys).

The producer streams the listing page by page and only ever holds the pages it reads ahead
(``plan.LIST_AHEAD`` chunks of 1000 keys, and two pages in the listing's own thread) and one task
of items.  This drives it through stubs, never S3: a listing stub that yields ``ObjectInfo``
lazily (as the ListObjectsV2 paginator does), a destination store whose reads answer "not found"
at once (nothing done yet: every key needs work), and for the whole ``produce`` path a stub Celery
app whose ``send_task`` serialises the message to JSON and drops it, plus a real Redis (started
here with ``devtools.services.RedisServer``) for the progress counters.

Each (path, size) runs in a fresh child process: its peak RSS above the post-import baseline
(sampled every 5 ms) and its tracemalloc peak are the numbers.  A control path that materialises
the listing (``list(src.list())``) shows what O(keys) memory looks like on the same meter.

    python benchmarks/bench_producer_memory.py [--sizes 10000 100000] [--paths pending produce]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc

import _common as C

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RssSampler(threading.Thread):
    """Highest RSS seen while running, sampled in the background."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, rss_bytes())


class ListingStub:
    """A Store whose ``list`` yields n keys lazily, in pages, as S3Store.list does."""

    uri = "s3://stub-in/survey"

    def __init__(self, n: int):
        self.n = n

    def list(self, *, suffixes: tuple[str, ...] = (), page_size: int = 1000, under="", read=None):
        """S3's listing: ETags come with it, nothing is read (``read`` is a local store's)."""
        from echocam.bucket.storage import ObjectInfo

        for i in range(self.n):
            key = f"site {i % 97:02d}/day {i % 31:02d}/rec_{i:08d}.wav"
            if not suffixes or key.endswith(suffixes):
                yield ObjectInfo(key, 440044, f'"{i:032x}"')


class NothingDoneStore:
    """A destination with no records yet: every read is "not found" at once, its done index is
    empty; writes vanish."""

    uri = "s3://stub-out/cams"

    def list(self, *, suffixes=(), page_size: int = 1000, under: str = "", read=None):
        return iter(())

    def keys(self, *, page_size: int = 1000, under: str = ""):
        return iter(())

    def get(self, key: str, *, max_bytes: int | None = None):
        raise FileNotFoundError(key)

    def head(self, key: str):
        return None

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        return True


class DiscardingApp:
    """Stands in for the Celery app: the message is serialised as a send would, then dropped."""

    def __init__(self):
        self.tasks = 0
        self.bytes = 0

    def send_task(self, name, args=None, kwargs=None, queue=None, **options):
        self.bytes += len(json.dumps([name, args, kwargs, queue]))
        self.tasks += 1

    @contextlib.contextmanager
    def producer_or_acquire(self):
        yield self

    @contextlib.contextmanager
    def batch(self, max_size: int):
        yield self

    def flush(self) -> None:
        pass


def child(path: str, n: int, broker_url: str, task_size: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from echocam.bucket.plan import plan
    from echocam.settings import Params, Settings
    from producer.enqueue import produce

    settings = Settings(broker_url=broker_url or Settings().broker_url, task_size=task_size)
    src, dst = ListingStub(n), NothingDoneStore()
    base = rss_bytes()
    sampler = RssSampler()
    sampler.start()
    tracemalloc.start()
    t0 = time.perf_counter()
    extra: dict = {}
    if path == "pending":
        with ThreadPoolExecutor(settings.io_threads) as pool:
            count = sum(
                1
                for _ in plan(
                    src,
                    dst,
                    extensions=settings.extensions,
                    fingerprint="f",
                    run_id="r",
                    pool=pool,
                    chunk=max(settings.page_size, 64),
                    page_size=settings.page_size,
                )
            )
    elif path == "produce":
        app = DiscardingApp()
        model = {"arch": "resnet18", "sha256": "0" * 64, "weights": "random"}
        out = produce(src, dst, app=app, model=model, params=Params(), settings=settings)
        count = out.recordings
        extra = {"tasks": app.tasks, "message_bytes": app.bytes}
    elif path == "control-materialised":
        count = len(list(src.list(suffixes=settings.extensions)))
    else:
        raise SystemExit(f"unknown path {path}")
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = sampler.stop()
    return {
        "path": path,
        "keys": n,
        "processed": count,
        "seconds": seconds,
        "keys_per_s": count / seconds if seconds else 0.0,
        "tracemalloc_peak_bytes": traced_peak,
        "rss_baseline_bytes": base,
        "rss_peak_growth_bytes": peak - base,
        **extra,
    }


def run(args: argparse.Namespace) -> dict:
    from devtools.services import RedisServer

    rows = []
    with RedisServer() as redis_srv:
        for path in args.paths:
            for n in args.sizes:
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", path, str(n), redis_srv.url,
                     str(args.task_size)],
                    capture_output=True, text=True, timeout=600, check=False,
                )  # fmt: skip
                if proc.returncode != 0:
                    raise RuntimeError(f"{path} {n}: child failed:\n{proc.stderr}")
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(
                    f"  {path} {n}: {r['seconds']:.1f} s, traced peak "
                    f"{r['tracemalloc_peak_bytes'] / 2**20:.2f} MiB, RSS growth "
                    f"{r['rss_peak_growth_bytes'] / 2**20:.2f} MiB",
                    flush=True,
                )
    growth = {}
    lo, hi = min(args.sizes), max(args.sizes)
    for path in args.paths:
        by_n = {r["keys"]: r for r in rows if r["path"] == path}
        growth[path] = {
            "keys_ratio": hi / lo,
            "tracemalloc_peak_ratio": by_n[hi]["tracemalloc_peak_bytes"]
            / max(1, by_n[lo]["tracemalloc_peak_bytes"]),
            "rss_growth_mib_small": by_n[lo]["rss_peak_growth_bytes"] / 2**20,
            "rss_growth_mib_large": by_n[hi]["rss_peak_growth_bytes"] / 2**20,
            "tracemalloc_bytes_per_extra_key": (
                by_n[hi]["tracemalloc_peak_bytes"] - by_n[lo]["tracemalloc_peak_bytes"]
            )
            / (hi - lo),
        }
    return {"task_size": args.task_size, "runs": rows, "growth": growth}


def report(res: dict) -> str:
    rows = [
        [
            r["path"],
            r["keys"],
            r["seconds"],
            r["keys_per_s"],
            r["tracemalloc_peak_bytes"] / 2**20,
            r["rss_peak_growth_bytes"] / 2**20,
        ]
        for r in res["runs"]
    ]
    lines = [
        f"stub listing + not-found destination, task size {res['task_size']}",
        C.table(rows, ["path", "keys", "s", "keys/s", "traced peak MiB", "RSS growth MiB"]),
    ]
    for path, g in res["growth"].items():
        lines.append(
            f"  {path}: {g['keys_ratio']:.0f}x keys -> traced peak "
            f"x{g['tracemalloc_peak_ratio']:.2f}"
            f" ({g['tracemalloc_bytes_per_extra_key']:.1f} B per extra key), RSS growth "
            f"{g['rss_growth_mib_small']:.1f} -> {g['rss_growth_mib_large']:.1f} MiB"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        path, n, url, task_size = argv[1], int(argv[2]), argv[3], int(argv[4])
        print(json.dumps(child(path, n, url, task_size)))
        return None
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000])
    ap.add_argument(
        "--paths",
        nargs="+",
        default=["pending", "produce", "control-materialised"],
        choices=["pending", "produce", "control-materialised"],
    )
    ap.add_argument("--task-size", type=int, default=16, help="recordings per task")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    res = run(args)
    res["machine"] = C.machine(threads=0)
    res["machine"]["torch_threads"] = "n/a (the producer has no torch)"
    print(C.machine_line(res["machine"]))
    print(report(res))
    C.write_json(args.json, {"benchmark": "producer_memory", **res})
    return res


if __name__ == "__main__":
    main()
