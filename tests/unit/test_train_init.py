"""``echocam train --labels labels.csv --init PREVIOUS.pt``: the previous model's classes come
first and keep their fc rows; the labels' new classes are appended (a real short training run
on the sample recordings, with a class that has no validation examples)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import resnet18

from echocam.explain.model import save_checkpoint
from echocam.settings import Params, Settings
from echocam.train.config import TRAIN_INPUT_SIZE, TrainConfig
from echocam.train.labels import extend_classes, read_labels
from echocam.train.loop import build_net, train

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
OLD = ["Wren", "Robin"]


def previous(tmp_path) -> Path:
    torch.manual_seed(3)
    path = tmp_path / "previous.pt"
    save_checkpoint(path, resnet18(weights=None, num_classes=len(OLD)).state_dict(), OLD)
    return path


def test_extend_classes_keeps_the_base_order_and_reindexes():
    text = "key,label\na.wav,Thrush\nb.wav,Robin\nc.wav,Background\n"
    got = extend_classes(read_labels(text, source="s"), OLD)
    assert got.class_names == ["Wren", "Robin", "Background", "Thrush"]
    assert [(e.key, got.class_names[e.label]) for e in got.examples] == [
        ("a.wav", "Thrush"), ("b.wav", "Robin"), ("c.wav", "Background"),
    ]  # fmt: skip


def test_build_net_copies_the_previous_rows_and_seeds_the_new_ones(tmp_path):
    path = str(previous(tmp_path))
    old = torch.load(path, weights_only=True)["state_dict"]
    names = [*OLD, "Thrush"]
    a, started = build_net(path, names, settings=Settings(), seed=5)
    b, _ = build_net(path, names, settings=Settings(), seed=5)
    assert started.startswith("checkpoint:")
    for k in ("fc.weight", "fc.bias"):
        assert torch.equal(a.state_dict()[k][:2], old[k])
        assert torch.equal(a.state_dict()[k], b.state_dict()[k])  # the new row: seeded
    assert not torch.equal(a.state_dict()["fc.weight"][2], old["fc.weight"][0])
    other, _ = build_net(path, ["Thrush", "Wren"], settings=Settings(), seed=5)  # not a prefix
    assert not torch.equal(other.state_dict()["fc.weight"][1], old["fc.weight"][0])


def test_fine_tuning_from_a_checkpoint_appends_the_new_classes(tmp_path):
    wavs = sorted(p.name for p in SAMPLES.glob("*.wav"))
    # Robin (old) in one recording; Thrush (new) in two: validation holds one Thrush recording
    # and nothing of Wren or Robin, whose metrics must not crash
    rows = [f"{wavs[0]},Robin,0,5", f"{wavs[1]},Thrush,0,5", f"{wavs[2]},Thrush,0,5"]
    labels = tmp_path / "labels.csv"
    labels.write_text("key,label,start_s,end_s\n" + "\n".join(rows) + "\n")
    out = tmp_path / "model" / "next.pt"
    cfg = TrainConfig(
        source=str(SAMPLES),
        out=str(out),
        labels=str(labels),
        init=str(previous(tmp_path)),
        epochs=1,
        batch_size=2,
        epoch_windows=2,
        val_fraction=0.5,
        seed=0,
    )
    result = train(
        cfg,
        params=Params(input_size=TRAIN_INPUT_SIZE),
        settings=Settings(threads=2, io_threads=2),
        progress=False,
        log=lambda _: None,
    )
    blob = torch.load(out, weights_only=True)
    assert blob["class_names"] == ["Wren", "Robin", "Thrush"]
    assert blob["state_dict"]["fc.weight"].shape[0] == 3
    assert blob["data"]["val"]["classes"]["Thrush"]["recordings"] == 1
    val = result["val"]
    assert val["per_class"]["Wren"]["support"] == 0 and val["per_class"]["Robin"]["support"] == 0
    assert val["n"] >= 1 and 0.0 <= val["macro_f1"] <= 1.0


def test_a_background_class_joins_a_previous_models_class_of_that_name():
    """Fine-tuning a model that has a Background class on data without one: the --background
    recordings fill the previous model's class, in its place; data with its own keeps it."""
    from echocam.train.labels import Example, Labelled, extend_classes, with_background_class

    data = Labelled("s", ["a", "c"], [Example("a/1.wav", 0), Example("c/1.wav", 1)])
    widened = extend_classes(data, ["Background", "a"])
    got = with_background_class(widened, ["x.wav", "y.wav"], name="Background")
    assert got.class_names == ["Background", "a", "c"]
    assert [(e.key, e.label, e.background) for e in got.examples if e.background] == [
        ("x.wav", 0, True), ("y.wav", 0, True)
    ]  # fmt: skip
    fresh = with_background_class(data, ["x.wav"], name="Background")
    assert fresh.class_names == ["a", "c", "Background"] and fresh.examples[-1].label == 2
    own = Labelled("s", ["Background", "a"], [Example("Background/q", 0), Example("a/1", 1)])
    assert with_background_class(own, ["x.wav"], name="Background") is own
