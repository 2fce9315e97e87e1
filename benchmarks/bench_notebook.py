"""The reference notebook's way, one 5-s clip at a time, against echocam's batched path.

Per clip, as the notebook does it: ``librosa.load`` at 22050 Hz, ``melspectrogram`` (260 mels,
hop 200, fmax 13 kHz) and ``power_to_db(ref=np.max)``, ``librosa.display.specshow`` into a
500x500 matplotlib figure saved as PNG, the PNG reloaded with PIL, torchvision transforms
(Resize 224, ToTensor, Normalize), a batch-1 ResNet-18 forward with a ``SaveFeatures`` hook on
``layer4``, the numpy CAM (``np.dot`` of fc weights and features, min-max), ``skimage``
resize to 224 and a matplotlib overlay (image + CAM at alpha 0.5, plasma) saved as PNG.

The baseline is given every benefit: matplotlib's Agg backend, files on a RAM-backed temporary
directory when there is one, and the forward under ``torch.no_grad`` (the notebook built an
autograd graph).  echocam runs ``Explainer.explain`` on the bytes of the same clips, batch 32,
in the same process at the same torch threads.  Target: echocam >= 10x the notebook (clips/s).

    python benchmarks/bench_notebook.py [--clips 32] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import matplotlib

matplotlib.use("Agg")  # headless, and the fastest raster backend
# The notebook's fmax (13 kHz) lies above Nyquist at 22050 Hz; librosa says so on every clip.
warnings.filterwarnings("ignore", message="Empty filters detected")

import librosa  # noqa: E402
import librosa.display  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import skimage.transform  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

from echocam.explain.model import load_model  # noqa: E402
from echocam.explain.pipeline import Explainer, Source  # noqa: E402
from echocam.settings import Params, Settings  # noqa: E402


class SaveFeatures:
    """The notebook's hook: keeps the hooked layer's output as a numpy array."""

    def __init__(self, module: torch.nn.Module):
        self.hook = module.register_forward_hook(self.hook_fn)
        self.features: np.ndarray | None = None

    def hook_fn(self, module, inputs, output):
        self.features = output.cpu().data.numpy()

    def remove(self) -> None:
        self.hook.remove()


def get_cam(feature_conv: np.ndarray, weight_fc: np.ndarray, class_idx: int) -> np.ndarray:
    """The notebook's ``getCAM``: fc weights of one class dot the features, then min-max."""
    _, nc, h, w = feature_conv.shape
    cam = weight_fc[class_idx].dot(feature_conv.reshape((nc, h * w)))
    cam = cam.reshape(h, w)
    cam = cam - np.min(cam)
    return cam / np.max(cam)


PREPROCESS = transforms.Compose(
    [
        transforms.Resize((224, 224)),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)
DISPLAY = transforms.Resize((224, 224))


def notebook_clip(path: Path, workdir: Path, model: torch.nn.Module, p: Params) -> int:
    """One clip the notebook's way; returns the top-1 class (so nothing is optimised away)."""
    y, sr = librosa.load(path, sr=p.sample_rate)
    mel = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=p.n_fft, n_mels=p.n_mels, hop_length=p.hop_length, fmax=p.fmax
    )
    db = librosa.power_to_db(mel, ref=np.max)
    fig = plt.figure(figsize=(5, 5), dpi=100)  # 500x500 pixels
    ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
    ax.set_axis_off()
    librosa.display.specshow(db, sr=sr, hop_length=p.hop_length, fmax=p.fmax, ax=ax)
    spec_png = workdir / (path.stem + ".png")
    fig.savefig(spec_png)
    plt.close(fig)

    image = Image.open(spec_png).convert("RGB")
    tensor = PREPROCESS(image).unsqueeze(0)
    features = SaveFeatures(model.layer4)
    with torch.no_grad():
        logits = model(tensor)
    probs = torch.softmax(logits, dim=1).squeeze()
    features.remove()
    class_idx = int(probs.topk(1)[1][0])
    weight_softmax = np.squeeze(model.fc.weight.cpu().data.numpy())
    cam = get_cam(features.features, weight_softmax, class_idx)

    fig = plt.figure()
    plt.imshow(DISPLAY(image))
    plt.imshow(skimage.transform.resize(cam, (224, 224)), alpha=0.5, cmap="plasma")
    plt.axis("off")
    fig.savefig(workdir / (path.stem + "_overlay.png"))
    plt.close(fig)
    return class_idx


def make_clips(n: int, seconds: float, workdir: Path) -> list[Path]:
    """``n`` clips of ``seconds`` from the real recordings, at their own rates, as WAV files."""
    clips: list[Path] = []
    paths = C.recordings()
    while len(clips) < n:
        for src in paths:
            data, sr = sf.read(src, dtype="float32", always_2d=True)
            length = round(seconds * sr)
            for start in range(0, data.shape[0] - length + 1, length):
                out = workdir / f"clip{len(clips):04d}_{src.stem}.wav"
                sf.write(out, data[start : start + length], sr, subtype="PCM_16")
                clips.append(out)
                if len(clips) == n:
                    return clips
    return clips


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    params = Params()
    ram = Path("/dev/shm")
    base = str(ram) if ram.is_dir() and os.access(ram, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="echocam-nb-", dir=base) as tmp:
        workdir = Path(tmp)
        clips = make_clips(args.clips, params.window_seconds, workdir)
        sources = [Source(c.name, c.read_bytes()) for c in clips]
        model = load_model("random")
        # as `echocam run` builds it: decode and PNG encode on io threads
        pool = ThreadPoolExecutor(Settings().io_threads)
        explainer = Explainer(model, params, device="cpu", batch_size=args.batch, pool=pool)
        nb_model = model.net.net  # the same weights, as plain torchvision resnet18

        # Warm both: librosa compiles numba code on first use, oneDNN builds its kernels.
        notebook_clip(clips[0], workdir, nb_model, params)
        explainer.explain(sources[: args.batch])

        nb_times: list[float] = []
        ec_times: list[float] = []
        for rep in range(args.repeats):
            # Interleaved: echocam over all clips, then the notebook over all (or a sample).
            t0 = time.perf_counter()
            results = explainer.explain(sources)
            ec_times.append(time.perf_counter() - t0)
            assert all(r.record["status"] == "ok" for r in results)
            if rep < args.notebook_repeats:
                for c in clips:
                    t0 = time.perf_counter()
                    notebook_clip(c, workdir, nb_model, params)
                    nb_times.append(time.perf_counter() - t0)
    nb_per_clip = statistics.median(nb_times)
    ec_per_clip = statistics.median(ec_times) / len(clips)
    return {
        "clips": len(clips),
        "clip_seconds": params.window_seconds,
        "threads": args.threads,
        "batch": args.batch,
        "notebook_s_per_clip": C.summary(nb_times),
        "echocam_s_per_run": C.summary(ec_times),
        "notebook_clips_per_s": 1.0 / nb_per_clip,
        "echocam_clips_per_s": 1.0 / ec_per_clip,
        "speedup": nb_per_clip / ec_per_clip,
    }


def report(res: dict) -> str:
    rows = [
        ["notebook (per clip, matplotlib PNGs)", res["notebook_clips_per_s"], 1.0],
        [f"echocam Explainer.explain (batch {res['batch']})", res["echocam_clips_per_s"],
         res["speedup"]],
    ]  # fmt: skip
    return (
        f"{res['clips']} clips of {res['clip_seconds']:g} s, torch threads {res['threads']}\n"
        + C.table(rows, ["path", "clips/s", "x notebook"])
        + f"\nechocam / notebook = {res['speedup']:.1f}x "
        + f"(target >= 10x: {C.verdict(res['speedup'], 10.0)})"
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32, help="5-s clips")
    ap.add_argument("--batch", type=int, default=32, help="echocam windows per forward")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both paths")
    ap.add_argument("--repeats", type=int, default=3, help="timed echocam runs (median)")
    ap.add_argument(
        "--notebook-repeats", type=int, default=1, help="timed notebook passes over the clips"
    )
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    res = run(args)
    res["machine"] = C.machine(threads=args.threads)
    print(C.machine_line(res["machine"]))
    print(report(res))
    C.write_json(args.json, {"benchmark": "notebook", **res})
    return res


if __name__ == "__main__":
    main()
