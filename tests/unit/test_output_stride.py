"""``Params.output_stride`` 16: layer4 without its stride, dilated.  Where its cells' fields are
(input gradients of the network itself), that display maps draw them there, that any ResNet-18
state dict runs at either stride, and that a species model trained at 16 carries it into every
run (a real short training and a real ``echocam run``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from echocam.errors import ParamsMismatch
from echocam.explain.cam import CellGrid, display_maps
from echocam.explain.model import Checkpoint, HookedResNet18, load_model, set_output_stride
from echocam.settings import Params, Settings, fingerprint, params_for_model
from echocam.train.config import TrainConfig
from echocam.train.loop import train

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_stride_16_unresized_cells_are_drawn_every_16_pixels():
    """On the unresized spectrogram (260 × 552) a net at 16 has 17 × 35 cells, and a one-cell
    map drawn at stride 16 peaks on pixel 16 j (where its field is centred: ``test_cam``)."""
    with torch.no_grad():
        _, grid = HookedResNet18(3, output_stride=16)(torch.zeros(1, 3, 260, 552))
    assert grid.shape[-2:] == (17, 35)
    for i, j in [(0, 0), (8, 17), (16, 34), (3, 20)]:
        one = torch.zeros(1, 1, 17, 35)
        one[0, 0, i, j] = 1
        shown = display_maps(one, size=(260, 552), grid=CellGrid(stride=16, unresized=True))
        assert divmod(int(shown.argmax()), 552) == (min(16 * i, 259), min(16 * j, 551))


def test_any_resnet18_state_dict_runs_at_either_stride_and_back():
    """The weights are the same tensors at 16 and 32 (an ImageNet state dict loads), and a
    model at 16 copied back to 32 computes what it did (the original left at 16)."""
    torch.manual_seed(1)
    state = resnet18(weights=None, num_classes=4).state_dict()
    a, b = HookedResNet18(4), HookedResNet18(4, output_stride=16)
    a.net.load_state_dict(state)
    b.net.load_state_dict(state)
    assert (a.output_stride, b.output_stride) == (32, 16)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits, features = a(x)
        fine = b(x)[1]
        assert fine.shape[-2:] == (14, 14) and features.shape[-2:] == (7, 7)
        assert b.at_output_stride(16) is b
        other = b.at_output_stride(32)
        assert b.output_stride == 16 and other.output_stride == 32  # a copy, b as it was
        back_logits, back = other(x)
    torch.testing.assert_close(back, features, rtol=0, atol=0)
    torch.testing.assert_close(back_logits, logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="output stride"):
        set_output_stride(a.net, 8)
    with pytest.raises(ValueError, match="output_stride"):
        Params(output_stride=8)


def test_a_checkpoint_carries_its_output_stride(tmp_path):
    """A checkpoint trained at 16 loads at 16 and runs only at 16; one saved before the
    parameter existed was trained at 32.  Runs at 32 keep their fingerprints."""
    state = resnet18(weights=None, num_classes=2).state_dict()
    trained = Params(input_size=0, output_stride=16).to_dict()
    path = tmp_path / "s16.pt"
    path.write_bytes(Checkpoint(state, ["a", "b"], params=trained).to_bytes())
    model = load_model(str(path))
    assert model.net.output_stride == 16
    assert params_for_model(Params(), model.params, explicit=()).output_stride == 16
    with pytest.raises(ParamsMismatch, match="output_stride 32"):
        params_for_model(Params(), model.params, explicit=("output_stride",))
    older = {k: v for k, v in trained.items() if k != "output_stride"}
    assert params_for_model(Params(output_stride=16), older, explicit=()).output_stride == 32
    with pytest.raises(ParamsMismatch, match="output_stride 16"):
        params_for_model(Params(output_stride=16), older, explicit=("output_stride",))
    old = tmp_path / "old.pt"
    old.write_bytes(Checkpoint(state, ["a", "b"], params=older).to_bytes())
    assert load_model(str(old)).net.output_stride == 32
    assert fingerprint(Params(output_stride=32), "ab" * 32) == fingerprint(Params(), "ab" * 32)
    assert fingerprint(Params(output_stride=16), "ab" * 32) != fingerprint(Params(), "ab" * 32)


@pytest.mark.slow
def test_a_model_trained_at_stride_16_runs_at_it(tmp_path):
    """``echocam train`` at output stride 16 (from random weights: one short epoch on the
    sample recordings), then ``echocam run`` with its checkpoint: cam.npz holds the 17 × 35
    grid, and each window's evidence peak is that of the stride-16 display map."""
    from echocam.explain.localise import Axes, evidence

    wavs = sorted(p.name for p in SAMPLES.glob("*.wav"))[:2]
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "key,label\n" + "".join(f"{w},{n}\n" for w, n in zip(wavs, "AB", strict=True))
    )
    out = tmp_path / "model" / "s16.pt"
    config = TrainConfig(
        source=str(SAMPLES),
        out=str(out),
        labels=str(labels),
        init="random",
        epochs=1,
        batch_size=2,
        epoch_windows=2,
        val_fraction=0,
        seed=0,
    )
    params = Params(input_size=0, output_stride=16)
    train(config, params=params, settings=Settings(threads=2, io_threads=2), progress=False,
          log=lambda _: None)  # fmt: skip
    assert torch.load(out, weights_only=True)["params"]["output_stride"] == 16
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "echocam_cli", "run", str(SAMPLES / wavs[0]), "--out", str(run),
         "--weights", str(out), "--threads", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (line,) = (run / "manifest.jsonl").read_text().splitlines()
    row = json.loads(line)
    assert row["status"] == "ok"
    rec = json.loads((run / row["record_key"]).read_text())
    with np.load(run / rec["outputs"]["cam"]) as npz:
        cams, starts = npz["cams"], npz["window_starts_s"]
        p = Params.from_dict(json.loads(str(npz["params"])))
    assert p.output_stride == 16 and cams.shape[-2:] == (17, 35)
    axes = Axes.for_params(p, frames=552)
    assert len(rec["windows"]) == len(starts) >= 2
    for j, window in enumerate(rec["windows"]):
        maps = display_maps(torch.from_numpy(cams[j : j + 1]), size=(260, 552), grid=CellGrid.of(p))
        e = evidence(maps[0, 0].numpy(), axes=axes, offset_s=float(starts[j]))
        explained = window["explained"][0]
        assert explained["peak_time_s"] == pytest.approx(e.peak_time_s, abs=1e-6)
        assert explained["peak_freq_hz"] == pytest.approx(e.peak_freq_hz, abs=1e-6)
