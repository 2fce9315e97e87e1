"""Host CPU per window: every stage of the path but the model forward, next to the forward.

The target: on the CPU, everything but the forward <= 0.4 x the forward, per window, at one
thread.  Real recordings (every decoder path), 5-s windows, batch 32, the explainer built
and warm, on one thread (``--threads``), no overlap.  Each repeat, interleaved so a busy
neighbour slows every row alike:

- **stages**: ``Explainer.decode``; then the device stage rebuilt from its building blocks with
  a clock around each (as ``Explainer._batch`` runs them); then ``Explainer.finish`` (stitch,
  PNG and NPZ encoding, records), with its evidence boxes (``encoder._evidence``) timed apart;
- **whole**: ``Explainer.explain`` on the same sources (the three stages one after another).

Reported per window: each stage, the sum, the forward, and the ratios (sum - forward) / forward
and (whole - forward) / forward.  For reference, the spectrogram also through the kernel GPUs
run (``torch.stft`` and the dense mel product, ``host_kernel=False``).

    python benchmarks/bench_host.py [--windows 64] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import _common as C
import torch

from echocam.explain import encoder, render
from echocam.explain.cam import class_activation_maps, display_maps
from echocam.explain.localise import band_floor, peaks_and_masks
from echocam.explain.model import load_model
from echocam.explain.pipeline import Explainer, Source
from echocam.settings import Params
from echocam.signal import colormaps
from echocam.signal.image import model_image, spectrogram_levels

STAGES = [
    ("decode", "Explainer.decode: soundfile + soxr_hq, windows cut"),
    ("spectrogram", "window gather + MelSpectrogramDB (CPU kernel)"),
    ("colours", "spectrogram_levels + magma lookup"),
    ("model_image", "model_image (uint8 antialiased resize to 224)"),
    ("normalise", "FrontEnd.model_input (ImageNet normalisation)"),
    ("forward", "HookedResNet18 forward (layer4 hook)"),
    ("cam", "softmax + top-k + CAM einsum"),
    ("display_maps", "display_maps (upsample to the spectrogram)"),
    ("overlay", "render.overlay (one lookup in the blend table)"),
    ("evidence_device", "peaks_and_masks + band_floor (the device stage's half)"),
    ("evidence_boxes", "encoder._evidence: the regions' boxes and call boxes (finish's half)"),
    ("encode", "rest of Explainer.finish: stitch, 2 PNG, NPZ, records"),
]


def staged_pass(ex: Explainer, sources: list[Source]) -> dict[str, float]:
    """Seconds per stage over ``sources``, the stages one after another."""
    p, fe = ex.params, ex.frontend
    t: dict[str, float] = defaultdict(float)

    def clock(name: str, t0: float) -> float:
        now = time.perf_counter()
        t[name] += now - t0
        return now

    t0 = time.perf_counter()
    decoded = ex.decode(sources)
    clock("decode", t0)
    cuts = [r.windowed for r in decoded.recordings]
    groups: dict[int, list[tuple[int, int]]] = defaultdict(list)  # windows of one length
    for r, pl in enumerate(cuts):
        groups[pl.length].extend((r, j) for j in range(len(pl.starts)))
    batches = [g[b0 : b0 + ex.batch_size] for g in groups.values()
               for b0 in range(0, len(g), ex.batch_size)]  # fmt: skip
    with torch.inference_mode():
        for batch in batches:
            t0 = time.perf_counter()
            waves = torch.stack([torch.from_numpy(cuts[r].window(j)) for r, j in batch])
            db = fe.db(waves)
            t0 = clock("spectrogram", t0)
            levels = spectrogram_levels(db)
            rgb = colormaps.lookup(levels, fe.magma)
            t0 = clock("colours", t0)
            img8 = model_image(rgb)
            t0 = clock("model_image", t0)
            x = fe.model_input(img8)
            t0 = clock("normalise", t0)
            logits, features = ex.net(x)
            t0 = clock("forward", t0)
            probs = logits.float().softmax(dim=-1)
            ids = probs.topk(p.top_k, dim=-1).indices
            cams = class_activation_maps(features, ex.net.fc_weight, ids)
            t0 = clock("cam", t0)
            maps = display_maps(cams, size=(db.shape[-2], db.shape[-1]))
            t0 = clock("display_maps", t0)
            render.overlay(levels, maps, table=ex.blend)
            t0 = clock("overlay", t0)
            peaks_and_masks(maps, threshold=p.box_threshold)
            band_floor(db)
            clock("evidence_device", t0)
    blocks = list(ex.compute(decoded))  # the real arrays for the finish stage (not timed)
    for computed in blocks:
        for r, part in computed.parts.items():
            starts = cuts[r].starts[part.first : part.first + len(part)] / p.sample_rate
            t0 = time.perf_counter()
            a = part.arrays
            ev = (a.peak, a.evidence_mask, a.spectrogram_db, a.floor_db)
            encoder._evidence(*ev, starts, params=p)
            clock("evidence_boxes", t0)
    t0 = time.perf_counter()
    for computed in blocks:
        ex.finish(computed)
    clock("encode", t0)
    t["encode"] -= t["evidence_boxes"]  # finish runs them too: count them once
    t["windows"] = sum(len(b) for b in batches)
    return dict(t)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    params = Params()
    paths = C.recordings()
    chosen = C.pick_recordings(C.window_counts(paths, params), args.windows)
    sources = [Source(p.name, p.read_bytes(), p.stat().st_size) for p in chosen]
    ex = Explainer(load_model("random"), params, device="cpu", batch_size=args.batch)
    ex.explain(sources[:2])  # warm-up: oneDNN primitives, allocator, soxr, imports
    waves = torch.from_numpy(C.real_waves(args.batch, params, paths))
    spectrogram = ex.frontend.spectrogram
    passes, wholes, torch_kernel, host_kernel = [], [], [], []
    for _ in range(args.repeats):
        passes.append(staged_pass(ex, sources))
        t0 = time.perf_counter()
        results = ex.explain(sources)
        wholes.append(time.perf_counter() - t0)
        if any(r.record["status"] != "ok" for r in results):
            raise RuntimeError("a recording failed")
        with torch.inference_mode():
            for kernel, times in ((True, host_kernel), (False, torch_kernel)):
                spectrogram.host_kernel = kernel
                t0 = time.perf_counter()
                spectrogram(waves)
                times.append((time.perf_counter() - t0) / args.batch)
        spectrogram.host_kernel = True
    n = passes[0]["windows"]
    stages = {name: statistics.median(p[name] for p in passes) / n for name, _ in STAGES}
    total = sum(stages.values())
    forward = stages["forward"]
    whole = statistics.median(wholes) / n
    # per repeat, the ratio of two things measured in that repeat
    host_ratios = [(sum(p[s] for s, _ in STAGES) - p["forward"]) / p["forward"] for p in passes]
    whole_ratios = [(w - p["forward"]) / p["forward"] for w, p in zip(wholes, passes, strict=True)]
    return {
        "windows": n,
        "recordings": len(chosen),
        "recording_mix": {p.name: chosen.count(p) for p in dict.fromkeys(chosen)},
        "batch": args.batch,
        "threads": args.threads,
        "machine": C.machine(args.threads),
        "stage_s_per_window": stages,
        "staged_total_s_per_window": total,
        "forward_s_per_window": forward,
        "host_s_per_window": total - forward,
        "host_over_forward": statistics.median(host_ratios),
        "host_over_forward_per_run": host_ratios,
        "explain_s_per_window": whole,
        "explain_host_over_forward": statistics.median(whole_ratios),
        "spectrogram_cpu_kernel_s_per_window": statistics.median(host_kernel),
        "spectrogram_torch_stft_kernel_s_per_window": statistics.median(torch_kernel),
    }


def report(res: dict) -> str:
    total = res["staged_total_s_per_window"]
    rows = [
        [name, what, 1000 * res["stage_s_per_window"][name],
         100 * res["stage_s_per_window"][name] / total]
        for name, what in STAGES
    ]  # fmt: skip
    rows.append(["total", "sum of stages", 1000 * total, 100.0])
    rows.append(["host", "total minus the forward", 1000 * res["host_s_per_window"], ""])
    ratio, whole = res["host_over_forward"], res["explain_host_over_forward"]

    def at_most(value: float) -> str:
        return C.verdict(value, 0.4, higher_is_better=False)

    ms = {k: 1000 * res[f"spectrogram_{k}_kernel_s_per_window"] for k in ("cpu", "torch_stft")}
    summary = [
        ["stages: (total - forward) / forward", ratio, "<= 0.4", at_most(ratio)],
        ["Explainer.explain: (whole - forward) / forward", whole, "<= 0.4", at_most(whole)],
        ["spectrogram ms/window, CPU kernel", ms["cpu"], "", ""],
        ["spectrogram ms/window, torch.stft kernel (GPUs')", ms["torch_stft"], "", ""],
    ]
    return "\n".join(
        [
            C.machine_line(res["machine"]),
            f"{res['windows']} windows from {res['recordings']} real recordings, batch "
            f"{res['batch']}, {res['threads']} thread(s), stages one after another",
            C.table(rows, ["stage", "what", "ms/window", "%"]),
            "",
            C.table(summary, ["metric", "value", "target", "verdict"]),
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=64, help="5-s windows in the selection")
    ap.add_argument("--batch", type=int, default=32, help="windows per forward")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    res = run(args)
    print(report(res))
    C.write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
