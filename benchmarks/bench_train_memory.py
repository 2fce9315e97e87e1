"""Training memory stays flat as the training set grows (1k vs 10k clips).

``echocam train`` streams its data: the source is listed once (only the key strings are kept),
and each window's recording is fetched, decoded, cut and augmented on the decoding threads a
few batches ahead, then dropped.  This runs that data path over every clip once, in a fresh
child process per size: ``list_folders`` → ``split_by_recording`` → one class-balanced epoch
over all training examples through the ``Loader`` (fetch, decode, crop, background mix from
the real recordings, gain; ``--io-threads`` threads, ``--prefetch`` batches ahead) → the front
end with time and frequency masks (``model_inputs``).  That is all ``train`` does per window
but the network step, whose memory does not depend on the set's size (``bench_train.py``
measures the step).  The numbers: peak RSS above the post-import baseline, sampled every 5 ms
(``bench_producer_memory.RssSampler``).

A control path decodes every clip and keeps the samples (what a trainer that loads its data
set first holds), on the same meter, to show what O(clips) memory looks like.

Clips are ``--clip-s`` seconds of synthetic species (``devtools.synthetic`` over the real
recordings); ``--distinct`` different clips are written and hard-linked under as many keys as
asked, so every key is still fetched and decoded while the scratch folder stays small.

    python benchmarks/bench_train_memory.py [--sizes 1000 10000] [--clip-s 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
from bench_producer_memory import RssSampler, rss_bytes


def write_keys(root: Path, *, n: int, distinct: int, clip_s: float) -> Path:
    """``n`` keys under ``root``/train (a quarter per class), hard links to ``distinct`` clips."""
    from devtools import synthetic

    bgs = synthetic.backgrounds(C.recordings())
    clips = synthetic.write_species(
        root / "distinct",
        per_class=max(1, distinct // 4),
        backgrounds=bgs,
        seed=0,
        duration_s=clip_s,
        n_calls=1,
        window_s=clip_s,
    )
    classes = sorted({c.species for c in clips})
    for i in range(n):
        clip = clips[i % len(clips)]
        dst = root / "train" / clip.species / f"k{i:06d}.wav"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(root / "distinct" / clip.name, dst)
    assert len(classes) == 4
    return root / "train"


def child(path: str, source: str, *, io_threads: int, prefetch: int, batch: int) -> dict:
    """One path over every training example of ``source``; memory and counts."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from echocam.bucket.storage import LocalStore
    from echocam.settings import Params
    from echocam.signal.frontend import FrontEnd, windowed
    from echocam.train.config import Augment
    from echocam.train.dataset import Backgrounds, Loader, balanced_order, model_inputs
    from echocam.train.labels import list_folders, split_by_recording

    torch.set_num_threads(2)
    params, augment = Params(), Augment()
    fe = FrontEnd(params)
    fps = params.sample_rate / params.hop_length
    baseline = rss_bytes()
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    store = LocalStore(source)
    labelled = list_folders(store, extensions=C.AUDIO_SUFFIXES)
    train, _ = split_by_recording(labelled, val_fraction=0.2, seed=0)
    windows = 0
    if path == "stream":
        bg_dir = C.RECORDINGS if C.RECORDINGS.is_dir() else C.SAMPLES
        gen = torch.Generator().manual_seed(0)
        with ThreadPoolExecutor(io_threads) as pool:
            bgs = Backgrounds(LocalStore(bg_dir), params=params, extensions=C.AUDIO_SUFFIXES)
            loader = Loader(
                store,
                train.examples,
                params=params,
                augment=augment,
                pool=pool,
                batch_size=batch,
                prefetch=prefetch,
                backgrounds=bgs,
            )
            labels = [e.label for e in train.examples]
            order = balanced_order(labels, n=len(labels), n_classes=4, seed=0, epoch=1)
            for got in loader.epoch(order, epoch=1):
                x = model_inputs(
                    fe, [w.samples for w in got], augment=augment, generator=gen, frames_per_s=fps
                )
                windows += x.shape[0]
    else:  # "decoded": every clip decoded and kept
        kept = []
        for e in train.examples:
            kept.append(windowed(store.get(e.key)[0], params=params).audio.samples)
        windows = len(kept)
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    return {
        "path": path,
        "clips": len(labelled.examples),
        "windows": windows,
        "seconds": seconds,
        "peak_above_baseline_mib": (peak - baseline) / 2**20,
        "baseline_mib": baseline / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--paths", nargs="+", default=["stream", "decoded"])
    ap.add_argument("--clip-s", type=float, default=2.0, help="clip length, seconds")
    ap.add_argument("--distinct", type=int, default=48, help="different clips written")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--io-threads", type=int, default=8)
    ap.add_argument("--prefetch", type=int, default=4)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=2, metavar=("PATH", "SOURCE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        r = child(*args.child, io_threads=args.io_threads, prefetch=args.prefetch, batch=args.batch)
        print(json.dumps(r))
        return 0
    m = C.machine(2)
    print(C.machine_line(m), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="echocam-bench-train-mem-") as tmp:
        for n in args.sizes:
            source = write_keys(Path(tmp) / str(n), n=n, distinct=args.distinct, clip_s=args.clip_s)
            for path in args.paths:
                cmd = [sys.executable, __file__, "--child", path, str(source)]
                cmd += ["--batch", str(args.batch), "--io-threads", str(args.io_threads)]
                cmd += ["--prefetch", str(args.prefetch)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"  {n} clips, {path}: peak {r['peak_above_baseline_mib']:.0f} MiB above "
                    f"baseline, {r['windows']} windows in {r['seconds']:.0f} s",
                    flush=True,
                )
                results.append({"size": n, **r})
    rows = [
        [r["size"], r["path"], r["windows"], f"{r['peak_above_baseline_mib']:.0f}"] for r in results
    ]
    print(C.table(rows, ["clips", "path", "windows", "peak RSS above baseline, MiB"]))
    growth = {}
    for path in args.paths:
        small, large = (
            next(r for r in results if r["path"] == path and r["size"] == n)
            for n in (min(args.sizes), max(args.sizes))
        )
        growth[path] = {
            "clips_ratio": large["clips"] / small["clips"],
            "peak_ratio": large["peak_above_baseline_mib"] / small["peak_above_baseline_mib"],
        }
        print(
            f"{path}: {growth[path]['clips_ratio']:.0f}x clips -> "
            f"{growth[path]['peak_ratio']:.2f}x peak RSS above baseline"
        )
    if args.json:
        C.write_json(
            args.json,
            {
                "benchmark": "train_memory",
                "machine": m,
                "clip_s": args.clip_s,
                "results": results,
                "growth": growth,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
