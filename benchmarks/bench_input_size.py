"""What finer CAM cells cost: ``--input-size 0`` (the 260 × 552 spectrogram, 9 × 18 cells)
and with it ``--output-stride 16`` (17 × 35 cells) against the default 224 × 224 (7 × 7 cells),
on the CPU.

Per window, on the same real recordings and threads, in alternating rounds: the whole explain
path (``Explainer.explain``: decode to encoded outputs and records) and the bare forward of a
batch.  The quality side (pointing game, call-box IoU, F1 per family) is
``bench_families.py --input-size 0 [--output-stride 16]``.

    python benchmarks/bench_input_size.py [--windows 48] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import _common as C
import torch

from echocam.explain.model import load_model
from echocam.explain.pipeline import Explainer, Source
from echocam.settings import Params
from echocam.signal.frontend import FrontEnd

#: name → (input_size, output_stride)
CONFIGS = {"224": (224, 32), "0": (0, 32), "0, stride 16": (0, 16)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=48, help="5-s windows explained per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    m = C.machine(args.threads)
    print(C.machine_line(m), flush=True)
    params = {c: Params(input_size=s, output_stride=o) for c, (s, o) in CONFIGS.items()}
    counts = C.window_counts(C.recordings(), params["224"])
    chosen = C.pick_recordings(counts, args.windows)
    n_windows = sum(counts[p] for p in chosen)
    sources = [Source(p.name, p.read_bytes()) for p in chosen]
    model = load_model("random")
    waves = torch.from_numpy(C.real_waves(args.batch, params["224"]))
    with ThreadPoolExecutor(4) as pool:
        explainers = {
            s: Explainer(model, params[s], device="cpu", batch_size=args.batch, pool=pool)
            for s in CONFIGS
        }
        inputs = {s: FrontEnd(params[s])(waves) for s in CONFIGS}
        end_to_end: dict[str, list[float]] = {s: [] for s in CONFIGS}
        forward: dict[str, list[float]] = {s: [] for s in CONFIGS}
        for s in CONFIGS:  # warm: first calls build caches
            explainers[s].explain(sources[:1])
        for _ in range(args.rounds):
            for s in CONFIGS:
                t0 = time.perf_counter()
                explainers[s].explain(sources)
                end_to_end[s].append((time.perf_counter() - t0) / n_windows)
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    explainers[s].net(inputs[s])
                    forward[s].append((time.perf_counter() - t0) / args.batch)
    result = {"machine": m, "windows": n_windows, "batch": args.batch, "sizes": {}}
    rows = []
    for s in CONFIGS:
        e2e, fwd = statistics.median(end_to_end[s]), statistics.median(forward[s])
        grid = tuple(explainers[s].net(inputs[s][:1])[1].shape[-2:])
        result["sizes"][s] = {
            "end_to_end_ms_per_window": 1e3 * e2e,
            "forward_ms_per_window": 1e3 * fwd,
            "input": list(inputs[s].shape[-2:]),
            "cam_grid": list(grid),
            "rounds_end_to_end_ms": [round(1e3 * t, 2) for t in end_to_end[s]],
        }
        rows.append([s, "x".join(map(str, inputs[s].shape[-2:])),
                     "x".join(map(str, grid)), 1e3 * e2e, 1e3 * fwd])  # fmt: skip
    e2e = {s: r["end_to_end_ms_per_window"] for s, r in result["sizes"].items()}
    ratio, finer = e2e["0"] / e2e["224"], e2e["0, stride 16"] / e2e["0"]
    result["end_to_end_ratio_native_over_224"] = ratio
    result["end_to_end_ratio_stride16_over_native"] = finer
    print(C.table(rows, ["input size", "input", "CAM grid", "end to end ms/window", "forward ms"]))
    print(f"native / 224, end to end per window: {ratio:.2f}x ({n_windows} windows a round)")
    print(f"native at stride 16 / native, end to end per window: {finer:.2f}x")
    if args.json:
        C.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
