"""What a CAM costs: forward only vs forward + top-1 / top-5 CAM vs pytorch-grad-cam's GradCAM.

For a GAP+FC network CAM is one einsum on the layer4 features the forward already computed, so
``echocam.explain.cam.explain`` should cost the forward and nothing more; Grad-CAM (the same maps up
to scale, for this architecture) needs a backward pass.  Same batch of real spectrogram images, same
torch threads, interleaved runs; ratios to the hooked forward are reported.

    python benchmarks/bench_cam.py [--batch 32] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import _common as C
import torch

from echocam.explain.cam import class_activation_maps, explain
from echocam.explain.model import load_model
from echocam.explain.pipeline import Explainer
from echocam.settings import Params


def images(batch: int) -> tuple[torch.Tensor, Explainer]:
    params = Params()
    ex = Explainer(load_model("random"), params, device="cpu", batch_size=batch)
    with torch.inference_mode():
        waves = torch.from_numpy(C.real_waves(batch, params))
        x = ex.frontend(waves)
    return x.clone(), ex  # a normal tensor: autograd (Grad-CAM) refuses inference tensors


def run(args: argparse.Namespace) -> dict:
    from pytorch_grad_cam import GradCAM

    torch.set_num_threads(args.threads)
    x, ex = images(args.batch)
    net = ex.net
    grad_net = copy.deepcopy(net.net).requires_grad_(True)  # Grad-CAM needs gradients
    gradcam = GradCAM(model=grad_net, target_layers=[grad_net.layer4[-1]])

    def bare():
        with torch.inference_mode():
            net.net(x)

    def forward():
        with torch.inference_mode():
            net(x)

    def top(k: int):
        def f():
            with torch.inference_mode():
                ex_ = explain(net, x, top_k=k)
                ex_.cams.sum().item()  # the maps exist, not just a lazy promise

        return f

    def grad_cam():
        gradcam(input_tensor=x, targets=None)  # top-1 class of each image, maps at 224x224

    cases = {
        "bare torchvision forward": bare,
        "hooked forward (logits + layer4)": forward,
        "forward + top-1 CAM (explain)": top(1),
        "forward + top-5 CAM (explain)": top(5),
        "pytorch-grad-cam GradCAM (top-1)": grad_cam,
    }
    for f in cases.values():
        f()  # warm-up: kernels, allocator, grad-cam's hooks
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, f in cases.items():  # interleaved: noise hits every case alike
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    gradcam.activations_and_grads.release()

    # The CAM itself is milliseconds: time it alone, many runs, best (least disturbed) of them.
    with torch.inference_mode():
        logits, feats = net(x)
        tail: dict[int, float] = {}
        for k in (1, 5):
            runs = []
            for _ in range(args.tail_runs):
                t0 = time.perf_counter()
                ids = logits.softmax(-1).topk(k, dim=-1).indices
                class_activation_maps(feats, net.fc_weight, ids)
                runs.append(time.perf_counter() - t0)
            tail[k] = min(runs)
    fwd = statistics.median(times["hooked forward (logits + layer4)"])
    fwd_best = min(times["hooked forward (logits + layer4)"])
    return {
        "batch": args.batch,
        "threads": args.threads,
        "cases": {
            name: {
                **C.summary(t),
                "images_per_s": args.batch / statistics.median(t),
                "ratio_to_forward": statistics.median(t) / fwd,
            }
            for name, t in times.items()
        },
        "cam_only_s": {f"top{k}": v for k, v in tail.items()},
        "cam_only_pct_of_forward": {f"top{k}": 100 * v / fwd_best for k, v in tail.items()},
        "gradcam_over_top1": statistics.median(times["pytorch-grad-cam GradCAM (top-1)"])
        / statistics.median(times["forward + top-1 CAM (explain)"]),
    }


def report(res: dict) -> str:
    rows = [
        [name, 1000 * d["median_s"], d["images_per_s"], d["ratio_to_forward"]]
        for name, d in res["cases"].items()
    ]
    pct = res["cam_only_pct_of_forward"]
    return (
        f"batch {res['batch']} real spectrogram images, torch threads {res['threads']}\n"
        + C.table(rows, ["case", "ms/batch", "images/s", "x hooked forward"])
        + f"\nCAM alone (softmax + top-k + einsum): top-1 {pct['top1']:.3f} %, "
        + f"top-5 {pct['top5']:.3f} % of the forward; "
        + f"GradCAM / echocam top-1 = {res['gradcam_over_top1']:.2f}x"
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    ap.add_argument("--tail-runs", type=int, default=50, help="runs of the CAM alone (best)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    res = run(args)
    res["machine"] = C.machine(threads=args.threads)
    print(C.machine_line(res["machine"]))
    print(report(res))
    C.write_json(args.json, {"benchmark": "cam", **res})
    return res


if __name__ == "__main__":
    main()
