"""Training throughput: does the data path keep up with the device?

Synthetic species clips (``devtools.synthetic``, over the real recordings; at ``--clip-rate``,
48 kHz as field recorders record, so decoding resamples) are written to a scratch folder; then,
interleaved, ``--repeats`` times:

- **training path**: ``echocam.train``'s ``Loader`` (fetch, decode, crop, background mix, gain on
  ``--io-threads`` threads, ``--prefetch`` batches ahead) → ``model_inputs`` (front end with time
  and frequency masks) → ``train_step`` (forward, loss, backward, AdamW), ``--batches`` batches;
- **bare step**: ``train_step`` alone on one batch of real model inputs made beforehand, as many
  times;
- **data path alone**: the training path without the step: how many windows/s the loader and
  the front end could feed (above the bare step: decoding keeps up with the device);
- **loader CPU**: the host's own share, the loader alone (fetch, decode, crop, background mix,
  gain; the front end runs on the device of a GPU host): CPU-ms per window with recordings
  decoded at every window (``--decode-cache off``) and read from the decoded cache
  (``echocam.train.decoded``, filled by a first epoch), alternated ``--repeats`` times.

The loader of the training path keeps its recordings decoded (the default of ``echocam
train``) unless ``--decode-cache off``.

Both at the same batch, threads and device (bf16 autocast and channels-last on CUDA).  The
headline is training windows/s ÷ bare windows/s (target ≥ 0.8), with the fraction of the time
the loop waited for the loader, and the process's peak RSS.

    python benchmarks/bench_train.py                    # CPU, batch 16, 2 threads
    python benchmarks/bench_train.py --device cuda --batch 256 --batches 40 --clips 600
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import numpy as np
import torch


def write_clips(root: Path, *, clips: int, seed: int = 0, rate: int = 48000) -> Path:
    """About ``clips`` synthetic 6-s clips (a quarter per class: three species and clips without
    calls) under ``root``/train, as WAV at ``rate`` Hz (field recorders' 48 kHz by default:
    decoding them resamples, as it does real recordings)."""
    import soundfile as sf
    import soxr

    from devtools import synthetic

    paths = [p for p in sorted(C.RECORDINGS.glob("*")) if p.suffix in C.AUDIO_SUFFIXES]
    bgs = synthetic.backgrounds(paths or sorted(C.SAMPLES.glob("*.wav")))
    per = max(1, clips // (len(synthetic.SPECIES) + 1))
    synthetic.write_species(
        root / "train", per_class=per, backgrounds=bgs, seed=seed, duration_s=6.0, n_calls=2
    )
    for path in sorted((root / "train").rglob("*.wav")):
        y, sr = sf.read(path, dtype="float32")
        if sr != rate:
            sf.write(path, soxr.resample(y, sr, rate, quality="HQ"), rate, subtype="PCM_16")
    return root / "train"


def measure(
    source: Path,
    *,
    device: str,
    batch: int,
    batches: int,
    repeats: int,
    io_threads: int,
    prefetch: int,
    decode_cache: bool = True,
) -> dict:
    """Training path and bare step, interleaved; rates are medians over ``repeats``."""
    from torchvision.models import resnet18

    from echocam.bucket.storage import LocalStore
    from echocam.settings import Params
    from echocam.signal.frontend import FrontEnd
    from echocam.train.config import Augment
    from echocam.train.dataset import Loader, balanced_order, model_inputs
    from echocam.train.decoded import decoded_for
    from echocam.train.labels import list_folders
    from echocam.train.loop import train_step

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    params, augment = Params(), Augment()
    store = LocalStore(source)
    labelled = list_folders(store, extensions=C.AUDIO_SUFFIXES)
    labels = [e.label for e in labelled.examples]
    n_classes = len(labelled.class_names)
    fe = FrontEnd(params, dev)
    fps = params.sample_rate / params.hop_length
    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=len(labelled.class_names)).to(dev)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=cuda or None)
    gen = torch.Generator().manual_seed(0)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    with (
        ThreadPoolExecutor(io_threads) as pool,
        decoded_for("" if decode_cache else "off", params=params) as decoded,
    ):
        loader = Loader(
            store,
            labelled.examples,
            params=params,
            augment=augment,
            pool=pool,
            batch_size=batch,
            prefetch=prefetch,
            seed=0,
            decoded=decoded,
        )
        order0 = balanced_order(labels, n=batch, n_classes=n_classes, seed=0, epoch=0)
        first = next(loader.epoch(order0, epoch=0))
        x0 = model_inputs(fe, [w.samples for w in first])
        y0 = torch.tensor([w.label for w in first], device=dev)
        train_step(net, opt, None, x0, y0, label_smoothing=0.1)  # warm-up
        sync()

        def path(epoch: int, *, step: bool = True) -> tuple[float, float, int]:
            total = batch * batches
            order = balanced_order(labels, n=total, n_classes=n_classes, seed=0, epoch=epoch)
            wait, n = 0.0, 0
            t0 = time.perf_counter()
            it = loader.epoch(order, epoch=epoch)
            while True:
                tw = time.perf_counter()
                got = next(it, None)
                wait += time.perf_counter() - tw
                if got is None:
                    break
                x = model_inputs(
                    fe, [w.samples for w in got], augment=augment, generator=gen, frames_per_s=fps
                )
                y = torch.tensor([w.label for w in got], device=dev)
                if step:
                    train_step(net, opt, None, x, y, label_smoothing=0.1)
                n += len(got)
            sync()
            return time.perf_counter() - t0, wait, n

        def bare() -> tuple[float, int]:
            t0 = time.perf_counter()
            for _ in range(batches):
                train_step(net, opt, None, x0, y0, label_smoothing=0.1)
            sync()
            return time.perf_counter() - t0, batches * x0.shape[0]

        path_rates, bare_rates, data_rates, waits = [], [], [], []
        for r in range(repeats):
            s, w, n = path(r + 1)
            path_rates.append(n / s)
            waits.append(w / s)
            s, n = bare()
            bare_rates.append(n / s)
            s, _, n = path(100 + r, step=False)
            data_rates.append(n / s)
            print(
                f"  repeat {r + 1}: training path {path_rates[-1]:.1f} windows/s (waiting "
                f"{100 * waits[-1]:.0f} %), bare step {bare_rates[-1]:.1f} windows/s, data "
                f"path alone {data_rates[-1]:.1f} windows/s",
                flush=True,
            )
    train_rate, bare_rate = float(np.median(path_rates)), float(np.median(bare_rates))
    data_rate = float(np.median(data_rates))
    return {
        "device": str(dev),
        "batch": batch,
        "batches": batches,
        "io_threads": io_threads,
        "prefetch": prefetch,
        "train_windows_per_s": train_rate,
        "bare_windows_per_s": bare_rate,
        "train_over_bare": train_rate / bare_rate,
        "data_windows_per_s": data_rate,
        "data_over_bare": data_rate / bare_rate,
        "data_wait_fraction": float(np.median(waits)),
        "repeats": {"train": path_rates, "bare": bare_rates, "data": data_rates, "wait": waits},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "clips": len(labelled.examples),
        "decode_cache": decode_cache,
        "loader_cpu_ms_per_window": loader_cpu(
            store, labelled, batch=batch, repeats=repeats, io_threads=io_threads
        ),
    }


def loader_cpu(store, labelled, *, batch: int, repeats: int, io_threads: int) -> dict:
    """CPU-ms per window of the loader alone (no front end), decoding every window and reading
    the decoded cache, alternated: medians over ``repeats`` epochs of every example."""
    from echocam.settings import Params
    from echocam.train.config import Augment
    from echocam.train.dataset import Loader, balanced_order
    from echocam.train.decoded import decoded_for

    params, labels = Params(), [e.label for e in labelled.examples]
    n_classes = len(labelled.class_names)
    n = len(labels)
    out: dict[str, list[float]] = {"off": [], "cached": []}
    with (
        ThreadPoolExecutor(io_threads) as pool,
        decoded_for("", params=params) as cache,
        decoded_for("off", params=params) as off,
    ):
        loaders = {
            name: Loader(store, labelled.examples, params=params, augment=Augment(), pool=pool,
                         batch_size=batch, seed=0, decoded=decoded)
            for name, decoded in (("off", off), ("cached", cache))
        }  # fmt: skip
        for _ in loaders["cached"].epoch(np.arange(n), epoch=0):
            pass  # fills the cache: every recording decoded once
        for r in range(repeats):
            for name, loader in loaders.items():
                order = balanced_order(labels, n=n, n_classes=n_classes, seed=0, epoch=r + 1)
                c0 = time.process_time()
                windows = sum(len(b) for b in loader.epoch(order, epoch=r + 1))
                out[name].append(1000 * (time.process_time() - c0) / windows)
    return {
        "off": float(np.median(out["off"])),
        "cached": float(np.median(out["cached"])),
        "off_over_cached": float(np.median(out["off"]) / np.median(out["cached"])),
        "repeats": out,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=6, help="batches per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--io-threads", type=int, default=4, help="decoding threads")
    ap.add_argument("--prefetch", type=int, default=4, help="batches decoded ahead")
    ap.add_argument("--clips", type=int, default=48, help="synthetic clips to train on")
    ap.add_argument("--clip-rate", type=int, default=48000, help="the clips' sample rate, Hz")
    ap.add_argument(
        "--decode-cache", choices=("on", "off"), default="on",
        help="the training path's loader reads decoded recordings (on) or decodes every window",
    )  # fmt: skip
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    m = C.machine(args.threads)
    print(C.machine_line(m), flush=True)
    with tempfile.TemporaryDirectory(prefix="echocam-bench-train-") as tmp:
        source = write_clips(Path(tmp), clips=args.clips, rate=args.clip_rate)
        r = measure(
            source,
            device=args.device,
            batch=args.batch,
            batches=args.batches,
            repeats=args.repeats,
            io_threads=args.io_threads,
            prefetch=args.prefetch,
            decode_cache=args.decode_cache == "on",
        )
    r["machine"] = m
    rows = [
        ["training path (loader + front end + step)", f"{r['train_windows_per_s']:.1f}"],
        ["bare step (forward + backward + AdamW)", f"{r['bare_windows_per_s']:.1f}"],
        ["training / bare (target >= 0.8)", f"{r['train_over_bare']:.2f}"],
        ["data path alone (loader + front end, no step)", f"{r['data_windows_per_s']:.1f}"],
        ["time waiting for the loader", f"{100 * r['data_wait_fraction']:.1f} %"],
        ["peak RSS", f"{r['peak_rss_mib']:.0f} MiB"],
    ]
    cpu = r["loader_cpu_ms_per_window"]
    print(C.table(rows, ["what", f"windows/s, batch {args.batch}, {args.device}"]))
    print(
        f"loader CPU-ms per window: {cpu['off']:.2f} decoding every window, {cpu['cached']:.2f} "
        f"from the decoded cache ({cpu['off_over_cached']:.1f}x)"
    )
    if args.json:
        C.write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
