"""Local path: per-stage cost and end-to-end windows/s of local mode on CPU.

Real recordings in a folder, 5-s windows, batch 32, at torch threads 1 and 2.  End to end is
local mode's pipeline (``run_chunks`` over chunks of ``--chunk-size`` recordings: read + decode,
device, encode + write overlapped, outputs and records written to disk), with the explainer
built and warm.  Next to it, the bare torchvision ResNet-18 forward on the same batch and
threads: the ratio end-to-end / bare says how much the rest of the path (decode, spectrogram,
CAM, overlay, encoding, writes) costs on top of the network.  Targets: ratio >= 0.8, CAM <= 2 %
of the forward.  The stage table times the same building blocks one after another.

    python benchmarks/bench_local.py [--windows 128] [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import _common as C
import numpy as np
import torch

from echocam.explain import render
from echocam.explain.cam import class_activation_maps, display_maps
from echocam.explain.localise import peaks_and_masks
from echocam.explain.model import load_model
from echocam.explain.pipeline import Explainer, Source
from echocam.settings import Params, Settings
from echocam.signal import audio, windows
from echocam.signal.image import model_image, normalise, spectrogram_rgb

STAGES = [
    ("decode", "decode + resample (soundfile, soxr_hq)"),
    ("spectrogram", "window framing + MelSpectrogramDB"),
    ("image", "FrontEnd.colours (levels, RGB, model image) + model_input"),
    ("forward", "HookedResNet18 forward (layer4 hook)"),
    ("cam", "softmax + top-k + CAM einsum"),
    ("overlay", "display_maps + render.overlay + peaks_and_masks"),
    ("host_copy", "host arrays (views on CPU, pinned copies on CUDA)"),
    ("encode", "stitch + 2 PNG (ISA-L) + NPZ per recording (bench_host.py: with the rest)"),
]


def staged_pass(ex: Explainer, sources: list[Source], p: Params) -> dict[str, float]:
    """The pipeline's path rebuilt from its building blocks, with a clock around each stage."""
    t: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    decoded = [audio.decode(s.data, **p.decode_options()) for s in sources]
    t["decode"] += time.perf_counter() - t0
    length = p.window_samples
    items = []
    for r, a in enumerate(decoded):
        n = min(length, a.samples.shape[0])
        for s in windows.window_starts(a.samples.shape[0], window=n, hop=n):
            items.append((r, int(s), n))
    per_rec: dict[int, list] = defaultdict(list)
    with torch.inference_mode():
        for b0 in range(0, len(items), ex.batch_size):
            batch = items[b0 : b0 + ex.batch_size]
            t0 = time.perf_counter()
            waves = np.stack([decoded[r].samples[s : s + n] for r, s, n in batch])
            db = ex.frontend.db(torch.from_numpy(waves).to(ex.device))
            t1 = time.perf_counter()
            levels, rgb, img8 = ex.frontend.colours(db)
            img = ex.frontend.model_input(img8)
            t2 = time.perf_counter()
            logits, features = ex.net(img)
            t3 = time.perf_counter()
            probs = logits.float().softmax(dim=-1)
            ids = probs.topk(p.top_k, dim=-1).indices
            cams = class_activation_maps(features, ex.net.fc_weight, ids)
            top = probs.topk(p.top_k, dim=-1)
            t4 = time.perf_counter()
            maps = display_maps(cams, size=(db.shape[-2], db.shape[-1]))
            ov = render.overlay(levels, maps, table=ex.blend)
            peaks_and_masks(maps, threshold=p.box_threshold)
            t5 = time.perf_counter()
            out = {
                "spectrogram_db": db,
                "spectrogram_rgb": rgb,
                "overlay": ov,
                "class_ids": ids,
                "logits": logits.gather(1, ids),
                "probabilities": probs.gather(1, ids),
                "top_ids": top.indices,
                "top_probs": top.values,
                "cams": cams,
            }
            host = {name: v.numpy() for name, v in out.items()}  # CPU: views, as the pipeline
            for i, (r, _, _) in enumerate(batch):
                per_rec[r].append({name: arr[i] for name, arr in host.items()})
            t6 = time.perf_counter()
            for name, a, b in [
                ("spectrogram", t0, t1),
                ("image", t1, t2),
                ("forward", t2, t3),
                ("cam", t3, t4),
                ("overlay", t4, t5),
                ("host_copy", t5, t6),
            ]:
                t[name] += b - a
    t0 = time.perf_counter()
    for r, wins in per_rec.items():
        starts = np.array([s for rr, s, _ in items if rr == r])
        columns = np.rint(starts / p.hop_length).astype(np.int64)
        spec = render.stitch(np.stack([w["spectrogram_rgb"] for w in wins]), columns)
        ov = render.stitch(np.stack([w["overlay"] for w in wins]), columns)
        ov = ov.reshape(-1, *ov.shape[2:])
        render.encode_png(spec, compress_level=p.png_compress_level)
        render.encode_png(ov, compress_level=p.png_compress_level)
        np.savez(
            io.BytesIO(),
            spectrogram_db=np.stack([w["spectrogram_db"] for w in wins]),
            window_starts_s=starts / p.sample_rate,
            class_ids=np.stack([w["class_ids"] for w in wins]),
            logits=np.stack([w["logits"] for w in wins]),
            probabilities=np.stack([w["probabilities"] for w in wins]),
            cams=np.stack([w["cams"] for w in wins]),
            params=np.array(json.dumps(p.to_dict(), sort_keys=True)),
        )
    t["encode"] += time.perf_counter() - t0
    t["windows"] = len(items)
    return dict(t)


def cam_tail_cost(ex: Explainer, img: torch.Tensor, k: int, repeats: int = 50) -> float:
    """Seconds of the post-forward part of ``explain`` (softmax, top-k, einsum), many runs.

    It is a few milliseconds at most: one pass is below the clock's noise on a busy machine,
    so it is timed over many runs on the features of one forward.
    """
    with torch.inference_mode():
        logits, features = ex.net(img)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            probs = logits.float().softmax(dim=-1)
            ids = probs.topk(k, dim=-1).indices
            class_activation_maps(features, ex.net.fc_weight, ids)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    params = Params()
    paths = C.recordings()
    counts = C.window_counts(paths, params)
    chosen = C.pick_recordings(counts, args.windows)
    sources = [Source(p.name, p.read_bytes(), p.stat().st_size) for p in chosen]
    n_windows = sum(counts[p] for p in chosen)
    model = load_model("random")
    # as `echocam run` builds it: reads, decoding, encoding and writes on io threads
    pool = ThreadPoolExecutor(Settings().io_threads)
    ex = Explainer(model, params, device="cpu", batch_size=args.batch, pool=pool)
    local = C.LocalMode(ex, chosen, chunk_size=args.chunk_size, pool=pool)

    from torchvision.models import resnet18

    bare = resnet18(weights=None).eval()
    bare.load_state_dict(model.net.net.state_dict())
    with torch.inference_mode():
        waves = torch.from_numpy(C.real_waves(args.batch, params, paths))
        rgb = spectrogram_rgb(ex.frontend.db(waves), lut=ex.frontend.magma)
        img = normalise(model_image(rgb))
    n_batches = -(-n_windows // args.batch)
    result = {
        "windows": n_windows,
        "recordings": len(chosen),
        "recording_mix": {p.name: chosen.count(p) for p in dict.fromkeys(chosen)},
        "batch": args.batch,
        "chunk_size": args.chunk_size,
        "by_threads": {},
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        ex.explain(sources[:2])  # warm-up: oneDNN primitives, allocator, soxr
        with torch.inference_mode():
            bare(img)
        e2e, fwd, ratios, passes = [], [], [], []
        for _ in range(args.repeats):
            # Interleaved, so a noisy neighbour slows both sides of a ratio alike.
            t0 = time.perf_counter()
            local.run()
            e2e.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(n_batches):
                    bare(img)
            fwd.append((time.perf_counter() - t0) * n_windows / (n_batches * args.batch))
            ratios.append(fwd[-1] / e2e[-1])
            passes.append(staged_pass(ex, sources, params))
        stages = {
            name: statistics.median(p[name] for p in passes) / n_windows for name, _ in STAGES
        }
        staged_total = sum(stages.values())
        cam_s = cam_tail_cost(ex, img, params.top_k)
        with torch.inference_mode():
            fwd_batch = C.timeit(lambda: ex.net(img), repeats=args.repeats)["median_s"]
        result["by_threads"][str(threads)] = {
            "e2e": C.summary(e2e),
            "bare_forward_same_windows": C.summary(fwd),
            "e2e_windows_per_s": n_windows / statistics.median(e2e),
            "bare_windows_per_s": n_windows / statistics.median(fwd),
            "e2e_over_bare": statistics.median(ratios),
            "e2e_over_bare_per_run": ratios,
            "stage_s_per_window": stages,
            "staged_total_s_per_window": staged_total,
            "cam_s_per_batch": cam_s,
            "hooked_forward_s_per_batch": fwd_batch,
            "cam_pct_of_forward": 100 * cam_s / fwd_batch,
        }
    local.close()
    return result


def report(res: dict) -> str:
    threads = list(res["by_threads"])
    rows = []
    for name, what in STAGES:
        row = [name, what]
        for t in threads:
            d = res["by_threads"][t]
            ms = 1000 * d["stage_s_per_window"][name]
            row += [ms, 100 * d["stage_s_per_window"][name] / d["staged_total_s_per_window"]]
        rows.append(row)
    total = ["total", "sum of stages"]
    for t in threads:
        d = res["by_threads"][t]
        total += [1000 * d["staged_total_s_per_window"], 100.0]
    rows.append(total)
    header = ["stage", "building blocks"]
    for t in threads:
        header += [f"ms/window t={t}", f"% t={t}"]
    lines = [
        f"{res['windows']} windows from {res['recordings']} real recordings, batch {res['batch']}, "
        f"chunks of {res['chunk_size']} recordings",
        C.table(rows, header),
        "",
    ]
    rows = []
    for t in threads:
        d = res["by_threads"][t]
        rows.append(
            [
                t,
                d["e2e_windows_per_s"],
                d["bare_windows_per_s"],
                d["e2e_over_bare"],
                C.verdict(d["e2e_over_bare"], 0.8),
                d["cam_pct_of_forward"],
                C.verdict(d["cam_pct_of_forward"], 2.0, higher_is_better=False),
            ]
        )
    lines.append(
        C.table(
            rows,
            [
                "threads",
                "e2e win/s",
                "bare fwd win/s",
                "e2e/bare",
                "(>= 0.8)",
                "CAM % of fwd",
                "(<= 2 %)",
            ],
        )
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=128, help="5-s windows in the selection")
    ap.add_argument("--batch", type=int, default=32, help="windows per forward")
    ap.add_argument("--chunk-size", type=int, default=Settings().chunk_size, help="recs per chunk")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    res = run(args)
    res["machine"] = C.machine(threads=args.threads[-1])
    res["machine"]["torch_threads"] = args.threads
    print(C.machine_line({**res["machine"], "torch_threads": args.threads}))
    print(report(res))
    C.write_json(args.json, {"benchmark": "local", **res})
    return res


if __name__ == "__main__":
    main()
