"""`echocam train` and `echocam evaluate` on synthetic species mixed into the real recordings.

One checkpoint is trained per session (``trained_species``: from random weights, interrupted by
SIGTERM after its first epoch and resumed) and shared: held-out macro-F1, the pointing game,
`echocam run` and a real worker all use it.  Held-out clips are new clips over recordings the
training never heard.  The CLI's other sources (a labels CSV of long recordings in a bucket, a
validation source, a checkpoint written to and loaded from s3://) train for one short epoch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from devtools import synthetic
from devtools.stack import echocam
from tests.helpers import RECORDINGS, marks, needs_shared, own_queue, start_worker
from tests.trained_species import CLASSES, EPOCHS, HELDOUT_PER_CLASS, SPECIES, TRAIN_PER_CLASS

pytestmark = [needs_shared]

# -- the front end is the inference front end -----------------------------------------------


def test_training_window_input_equals_inference_input(tmp_path, species_checkpoint):
    """A training window (no augmentation) gives the inference model input, bit for bit."""
    from concurrent.futures import ThreadPoolExecutor

    from echocam.api import explain_bytes
    from echocam.bucket.storage import LocalStore
    from echocam.settings import Params
    from echocam.signal.frontend import FrontEnd, windowed
    from echocam.signal.image import normalise
    from echocam.train.config import Augment
    from echocam.train.dataset import Loader, model_inputs
    from echocam.train.labels import Example
    from echocam.train.predict import eval_starts

    name = "spinetail_44k.wav"  # 44.1 kHz: resampled, 4 windows (the last aligned to the end)
    data = (RECORDINGS / name).read_bytes()
    params = Params()
    cut = windowed(data, params=params)
    j = 2
    start_s = cut.starts[j] / params.sample_rate
    ex = Example(name, 0, start_s, start_s + params.window_seconds)
    with ThreadPoolExecutor(2) as pool:
        loader = Loader(
            LocalStore(RECORDINGS),
            [ex],
            params=params,
            augment=Augment.off(),
            pool=pool,
            batch_size=1,
        )
        (batch,) = loader.epoch([0], epoch=1)
    fe = FrontEnd(params)
    x_train = model_inputs(fe, [batch[0].samples])
    assert torch.equal(x_train, fe(torch.from_numpy(cut.window(j))[None]))
    # ... and what `echocam run --save-inputs` saved for that window
    ex_run = explain_bytes(
        data, name=name, weights=str(species_checkpoint), device="cpu", save_inputs=True
    )
    saved = torch.from_numpy(np.array(ex_run.inputs[j])).permute(2, 0, 1)[None]
    assert torch.equal(x_train, normalise(saved))
    # validation / evaluate windows of a whole recording are the inference windows
    starts, length = eval_starts(cut.audio.samples.shape[0], params=params, span=None)
    assert np.array_equal(starts, cut.starts) and length == cut.length
    # with augmentation the same window differs (the check above can fail)
    with ThreadPoolExecutor(2) as pool:
        aug = Loader(
            LocalStore(RECORDINGS),
            [ex],
            params=params,
            augment=Augment(background_p=0.0),
            pool=pool,
            batch_size=1,
        )
        (batch_aug,) = aug.epoch([0], epoch=1)
    gen = torch.Generator().manual_seed(0)
    x_aug = model_inputs(
        fe,
        [batch_aug[0].samples],
        augment=Augment(mask_p=1.0),
        generator=gen,
        frames_per_s=params.sample_rate / params.hop_length,
    )
    assert not torch.equal(x_aug, x_train)


# -- data: split, sampling, labels ----------------------------------------------------------


def test_split_keeps_recordings_whole_and_stratifies():
    from echocam.train.labels import Example, Labelled, split_by_recording

    ex = [Example(f"a/{i}.wav", 0, s, s + 1) for i in range(10) for s in (0.0, 5.0)]
    ex += [Example(f"b/{i}.wav", 1) for i in range(5)]
    train, val = split_by_recording(Labelled("x", ["a", "b"], ex), val_fraction=0.2, seed=3)
    assert not {e.key for e in train.examples} & {e.key for e in val.examples}
    assert len(train.examples) + len(val.examples) == len(ex)
    val_by_class = [len({e.key for e in val.examples if e.label == c}) for c in (0, 1)]
    assert val_by_class == [2, 1]
    again = split_by_recording(Labelled("x", ["a", "b"], ex), val_fraction=0.2, seed=3)[1]
    assert again.examples == val.examples


def test_epochs_are_class_balanced():
    from echocam.train.dataset import balanced_order

    labels = [0] * 50 + [1] * 5 + [2] * 15
    order = balanced_order(labels, n=300, n_classes=3, seed=0, epoch=1)
    counts = np.bincount(np.asarray(labels)[order], minlength=3)
    assert counts.tolist() == [100, 100, 100]
    assert set(order[np.asarray(labels)[order] == 1]) == set(range(50, 55))  # all repeated


def test_call_mixing_adds_another_class_and_splits_the_target(tmp_path):
    """With ``mix_p`` 1 every training window holds another class's window at -6 to 0 dB, and
    its target gives that class its amplitude's share (1/3 to 1/2) and no other class any."""
    from concurrent.futures import ThreadPoolExecutor

    import soundfile as sf

    from echocam.bucket.storage import LocalStore
    from echocam.settings import Params
    from echocam.train.config import Augment
    from echocam.train.dataset import Loader, Window
    from echocam.train.labels import Example

    params = Params()
    t = np.arange(params.window_samples) / params.sample_rate
    for k, f in enumerate((1000.0, 3000.0, 6000.0)):  # a tone per class, one recording each
        sf.write(tmp_path / f"{k}.wav", 0.1 * np.sin(2 * np.pi * f * t), params.sample_rate)
    examples = [Example(f"{k}.wav", k) for k in range(3)]
    only_mixing = Augment(shift=False, background_p=0.0, gain_db=(0.0, 0.0), mask_p=0.0, mix_p=1)
    with ThreadPoolExecutor(2) as pool:
        loader = Loader(
            LocalStore(tmp_path), examples, params=params, augment=only_mixing, pool=pool,
            batch_size=4,
        )  # fmt: skip
        windows = [w for batch in loader.epoch([0, 1, 2] * 4, epoch=1) for w in batch]
    for w in windows:
        other, share = w.mixed
        assert other != w.label and 1 / 3 - 1e-6 <= share <= 1 / 2 + 1e-6
        target = w.target(3)
        assert target.sum() == pytest.approx(1.0) and target[w.label] == pytest.approx(1 - share)
        assert target[other] == pytest.approx(share) and np.count_nonzero(target) == 2
        spectrum = np.abs(np.fft.rfft(w.samples))
        peaks = set(np.argsort(spectrum)[-2:] * params.sample_rate // w.samples.size)
        freqs = {0: 1000, 1: 3000, 2: 6000}
        assert {freqs[w.label], freqs[other]} == {round(f, -3) for f in peaks}
    plain = Window(np.zeros(4, np.float32), label=1, example=0)  # not mixed: one-hot
    assert plain.target(3).tolist() == [0.0, 1.0, 0.0] and Augment.off().mix_p == 0


def test_labels_csv_windows_hold_the_annotated_span():
    from echocam.settings import Params
    from echocam.train.augment import crop_start
    from echocam.train.labels import read_labels
    from echocam.train.predict import eval_starts

    text = "key,label,start_s,end_s\nlong.wav,owl,12.0,13.5\nlong.wav,frog,40,52\nclip.wav,owl,,\n"
    lab = read_labels(text, source="s")
    assert lab.class_names == ["frog", "owl"] and [e.label for e in lab.examples] == [1, 1, 0]
    p = Params()
    n, sr, L = 60 * p.sample_rate, p.sample_rate, p.window_samples
    owl = lab.examples[1] if lab.examples[1].start_s == 12.0 else lab.examples[0]
    rng = np.random.default_rng(0)
    span = (int(12.0 * sr), int(13.5 * sr))
    for _ in range(50):
        s = crop_start(n, length=L, rng=rng, span=span)
        assert s <= span[0] and s + L >= span[1]
    (s,), _ = eval_starts(n, params=p, span=owl.span)
    assert s <= span[0] and s + L >= span[1]
    frog = next(e for e in lab.examples if e.label == 0)
    starts, _ = eval_starts(n, params=p, span=frog.span)
    assert starts[0] == 40 * sr and starts[-1] + L == 52 * sr  # the span is longer: tiled
    with pytest.raises(ValueError, match="start_s and end_s"):
        read_labels("key,label,start_s,end_s\na.wav,owl,3,\n", source="s")


# -- initialisation -------------------------------------------------------------------------


def test_target_f1_stops_after_enough_perfect_epochs():
    from echocam.train.config import TrainConfig
    from echocam.train.loop import _reached

    cfg = TrainConfig(source="s", out="o.pt", target_f1=0.95, target_epochs=2)
    rows = [{"val_macro_f1": f} for f in (0.5, 0.96, 0.9, 0.97)]
    assert not _reached(rows, cfg) and _reached([*rows, {"val_macro_f1": 1.0}], cfg)
    assert not _reached([*rows, {}], cfg)  # an epoch without validation does not count
    off = TrainConfig(source="s", out="o.pt")
    assert not _reached([{"val_macro_f1": 1.0}] * 5, off)


def test_init_imagenet_uses_the_cache_and_fails_clearly_offline(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    from echocam.errors import WeightsUnavailable
    from echocam.explain.model import imagenet_cache_path
    from echocam.settings import Settings
    from echocam.train.loop import build_net

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsUnavailable, match="Download .* on a machine that is online"):
        build_net("imagenet", ["a", "b"], settings=Settings(), seed=0)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))
    torch.manual_seed(5)
    fake = resnet18(weights=None).state_dict()
    imagenet_cache_path().parent.mkdir(parents=True)
    torch.save(fake, imagenet_cache_path())
    net, started = build_net("imagenet", ["a", "b"], settings=Settings(), seed=0)
    assert started.startswith("imagenet:") and net.fc.out_features == 2
    assert torch.equal(net.state_dict()["layer4.1.conv2.weight"], fake["layer4.1.conv2.weight"])


@pytest.mark.training
def test_seeded_cpu_training_is_reproducible(species_data, tmp_path):
    """Same seed, same data: the same weights (threads on; windows seeded by position)."""
    from echocam.explain.model import state_dict_sha256
    from echocam.settings import Params, Settings
    from echocam.train.config import TrainConfig
    from echocam.train.loop import train

    def run(name: str) -> str:
        cfg = TrainConfig(
            source=str(species_data["heldout"]),
            out=str(tmp_path / name / "m.pt"),
            init="random",
            epochs=1,
            batch_size=6,
            epoch_windows=6,
            val_fraction=0.0,
            seed=7,
        )
        train(
            cfg,
            params=Params(),
            settings=Settings(threads=2, io_threads=4),
            progress=False,
            log=lambda _: None,
        )
        blob = torch.load(tmp_path / name / "m.pt", weights_only=True)
        recipe = blob["train_config"]  # what trained the model, not how this machine ran it
        assert recipe["seed"] == 7 and not {"decode_cache", "prefetch"} & set(recipe)
        return state_dict_sha256(blob["state_dict"])

    assert run("a") == run("b")


@pytest.mark.training
def test_the_outside_box_loss_trains_on_labelled_boxes_only(species_data, tmp_path):
    """``--outside-box-loss`` changes a seeded run where the labels give the calls' boxes, and
    leaves it bit for bit where they label whole recordings (no box: no cell is outside)."""
    from echocam.explain.model import state_dict_sha256
    from echocam.settings import Params, Settings
    from echocam.train.config import TrainConfig
    from echocam.train.loop import train

    clips = species_data["held_clips"]
    rows = {
        "boxes": [
            f"{c.name},{c.species},{k.start_s:.3f},{k.end_s:.3f},{k.low_hz:.0f},{k.high_hz:.0f}"
            for c in clips
            for k in c.calls
        ]
        + [f"{c.name},{c.species},,,," for c in clips if not c.calls],
        "whole": [f"{c.name},{c.species},,,," for c in clips],
    }

    def run(labels: str, weight: float) -> str:
        name = f"{labels}-{weight}"
        csv_path = tmp_path / f"{labels}.csv"
        header = "key,label,start_s,end_s,low_hz,high_hz"
        csv_path.write_text("\n".join([header, *rows[labels]]) + "\n")
        cfg = TrainConfig(
            source=str(species_data["heldout"]), labels=str(csv_path),
            out=str(tmp_path / name / "m.pt"), init="random", epochs=1, batch_size=6,
            epoch_windows=6, val_fraction=0.0, seed=7, outside_box_loss=weight,
        )  # fmt: skip
        train(cfg, params=Params(), settings=Settings(threads=2), progress=False, log=print)
        blob = torch.load(tmp_path / name / "m.pt", weights_only=True)
        return state_dict_sha256(blob["state_dict"])

    assert run("boxes", 1.0) != run("boxes", 0.0)
    assert run("whole", 1.0) == run("whole", 0.0)


@pytest.mark.training
def test_a_background_class_made_of_the_background_recordings(species_data, tmp_path):
    """By default (``--background-class Background``), on a source without one, the
    --background recordings become the class's examples, split by recording like the others
    (here their windows chosen by the model); a source with the class keeps its own;
    ``--background-class ''`` makes none."""
    from echocam.settings import Params, Settings
    from echocam.train.config import Augment, TrainConfig
    from echocam.train.loop import train

    bg = sorted(p.name for p in species_data["bg"].iterdir())

    def run(source, name: str, **given) -> dict:
        cfg = TrainConfig(
            source=str(source), out=str(tmp_path / name / "m.pt"), init="random", epochs=1,
            batch_size=4, epoch_windows=8, val_fraction=0.3, seed=1,
            background=str(species_data["bg"]), **given,
        )  # fmt: skip
        train(cfg, params=Params(), settings=Settings(threads=2), progress=False, log=print)
        return json.loads((tmp_path / name / "metrics.json").read_text())

    without = tmp_path / "without"  # the held-out clips but their Background folder
    for d in species_data["heldout"].iterdir():
        if d.is_dir() and d.name != "Background":
            (without / d.name).mkdir(parents=True)
            for f in sorted(d.iterdir())[:4]:
                (without / d.name / f.name).write_bytes(f.read_bytes())
    m = run(without, "added", augment=Augment(hard_negatives_by="model"))
    assert m["val"]["class_names"] == [*sorted(SPECIES), "Background"]
    # each of the epoch's Background windows chosen by the model: 8 windows, 4 classes
    assert m["history"][0]["hard_negatives_chosen"] == 2 and m["history"][0]["hard_negatives_s"] > 0
    classes = {part: m["data"][part]["classes"]["Background"] for part in ("train", "val")}
    assert classes["train"]["recordings"] >= 1 and classes["val"]["recordings"] >= 1
    assert classes["train"]["recordings"] + classes["val"]["recordings"] == len(bg)
    assert m["data"]["windows_drawn"]["Background"] >= 1
    assert m["data"]["train"]["recordings"] + m["data"]["val"]["recordings"] == 4 * 3 + len(bg)

    own = species_data["heldout"] / "Background"  # a source with its own class keeps it, alone
    m = run(species_data["heldout"], "own")
    got = sum(m["data"][part]["classes"]["Background"]["recordings"] for part in ("train", "val"))
    assert got == len(list(own.iterdir()))

    m = run(without, "none", background_class="")  # the recordings only mixed in
    assert m["val"]["class_names"] == sorted(SPECIES)
    assert m["data"]["train"]["recordings"] + m["data"]["val"]["recordings"] == 4 * 3


# -- the trained checkpoint -----------------------------------------------------------------


def test_checkpoint_format_interrupt_and_resume(trained_species, species_data):
    from echocam.explain.model import load_model
    from echocam.settings import Params

    assert trained_species["interrupted_rc"] == 130, trained_species["log"]
    done = trained_species["interrupted"]["epochs_completed"]  # SIGTERM came during epoch 2
    assert 1 <= done < EPOCHS and f"resuming after epoch {done}" in trained_species["log"]
    blob = torch.load(trained_species["ckpt"], weights_only=True)
    assert set(blob) == {"state_dict", "class_names", "params", "metrics", "train_config", "data"}
    assert blob["class_names"] == CLASSES
    assert blob["params"] == Params().to_dict()
    m = blob["metrics"]
    assert [h["epoch"] for h in m["history"]] == list(range(1, m["epochs_completed"] + 1))
    assert m["skipped"] == {"undecodable": 1}  # the broken file: counted, not a crash
    assert blob["train_config"]["init"] == "random" and blob["train_config"]["seed"] == 0
    d = blob["data"]
    assert d["train"]["recordings"] + d["val"]["recordings"] == 4 * TRAIN_PER_CLASS + 1
    assert len(d["train"]["keys_sha256"]) == 64 and sum(d["windows_drawn"].values()) > 0
    assert all(v["recordings"] >= 4 for v in d["val"]["classes"].values())
    on_disk = json.loads((trained_species["dir"] / "metrics.json").read_text())
    assert on_disk["best_epoch"] == m["best_epoch"] and on_disk["val"]["macro_f1"] >= 0.9
    png = (trained_species["dir"] / "confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    model = load_model(str(trained_species["ckpt"]))  # the --weights loader
    assert model.class_names == CLASSES and model.params == Params().to_dict()


def test_heldout_macro_f1_with_echocam_evaluate(trained_species, species_data, tmp_path):
    proc = echocam(
        dict(os.environ),
        "evaluate",
        str(species_data["heldout"]),
        "--weights",
        str(trained_species["ckpt"]),
        "--out",
        str(tmp_path / "eval"),
        "--threads",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    print(
        f"\nheld-out: macro-F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f}", file=sys.stderr
    )
    assert m["examples"] == 4 * HELDOUT_PER_CLASS and m["macro_f1"] >= 0.9, m
    assert set(m["per_class"]) == set(CLASSES)
    conf = json.loads((tmp_path / "eval" / "confusion.json").read_text())
    assert np.array(conf["matrix"]).sum() == 4 * HELDOUT_PER_CLASS
    rows = list(csv.DictReader(io.StringIO((tmp_path / "eval" / "predictions.csv").read_text())))
    assert len(rows) == 4 * HELDOUT_PER_CLASS
    assert all(r["true"] == r["key"].split("/")[0] for r in rows)
    assert (tmp_path / "eval" / "confusion.png").read_bytes().startswith(b"\x89PNG")


def test_evaluate_plays_the_pointing_game_on_labelled_boxes_and_warns_when_it_fails(
    trained_species, species_data, tmp_path
):
    """Labels with boxes (the held-out calls): `echocam evaluate` reports the pointing game of
    the true class's CAM.  The same spans with bands where no call is (100-300 Hz) make the
    model look right for the wrong reasons, and evaluate says so."""
    # one row per clip: its two calls' box (the CAM peaks on one of them, and a row holding
    # only the other would count as a miss)
    clips = [c for c in species_data["held_clips"] if c.calls]
    boxes = [
        (c.name, c.species, min(k.start_s for k in c.calls), max(k.end_s for k in c.calls),
         min(k.low_hz for k in c.calls), max(k.high_hz for k in c.calls))
        for c in clips
    ]  # fmt: skip

    def evaluate(rows: list[str], name: str) -> tuple[dict, str]:
        labels = tmp_path / f"{name}.csv"
        labels.write_text("\n".join(["key,label,start_s,end_s,low_hz,high_hz", *rows]) + "\n")
        proc = echocam(
            dict(os.environ), "evaluate", str(species_data["heldout"]), "--labels", str(labels),
            "--weights", str(trained_species["ckpt"]), "--out", str(tmp_path / name),
            "--threads", "2",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads((tmp_path / name / "metrics.json").read_text()), proc.stderr

    right, err = evaluate(
        [f"{key},{sp},{a:.3f},{b:.3f},{lo:.0f},{hi:.0f}" for key, sp, a, b, lo, hi in boxes],
        "boxes",
    )
    print(f"\nevaluate's pointing game: {right['pointing_game']:.2f}", file=sys.stderr)
    assert right["boxed_examples"] == len(clips) and right["macro_f1"] >= 0.9
    assert right["pointing_game"] >= 0.8 and "wrong reasons" not in err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "boxes" / "predictions.csv").read_text())))
    pointed = [float(r["pointed"]) for r in rows]  # each span's own, one window each
    assert len(pointed) == len(clips) and np.mean(pointed) == pytest.approx(right["pointing_game"])
    wrong, err = evaluate(
        [f"{key},{sp},{a:.3f},{b:.3f},100,300" for key, sp, a, b, *_ in boxes], "low"
    )
    assert wrong["pointing_game"] <= 0.2 and wrong["macro_f1"] >= 0.9
    assert "right for the wrong reasons" in err and wrong["warning"] in err


def test_pointing_game_on_heldout_clips(trained_species, species_data):
    """The true class's CAM peaks inside a call's box (± half a CAM cell) in >= 80 % of clips."""
    from echocam.explain.model import load_model
    from echocam.settings import Params
    from echocam.train.pointing import play

    model = load_model(str(trained_species["ckpt"]))
    clips = [c for c in species_data["held_clips"] if c.calls]  # the species' clips
    hits = play(
        model,
        [c.samples for c in clips],
        [[k.box for k in c.calls] for c in clips],
        [model.class_names.index(c.species) for c in clips],
        params=Params(),
    )
    rate = float(np.mean(hits))
    print(f"\npointing game: {rate:.1%} of {len(hits)} held-out clips", file=sys.stderr)
    assert rate >= 0.8


def _subset(species_data, dest: Path, *, per_class: int) -> Path:
    """The first ``per_class`` held-out clips of each class, copied under ``dest``."""
    for folder in sorted(species_data["heldout"].iterdir()):
        if folder.is_dir():
            for clip in sorted(folder.glob("*.wav"))[:per_class]:
                (dest / folder.name).mkdir(parents=True, exist_ok=True)
                (dest / folder.name / clip.name).write_bytes(clip.read_bytes())
    return dest


@pytest.fixture(scope="module")
def heldout_run(trained_species, species_data, tmp_path_factory):
    """`echocam run` with the checkpoint over the held-out clips, every species explained."""
    out = tmp_path_factory.mktemp("heldout-run") / "cams"
    proc = echocam(
        dict(os.environ),
        "run",
        str(species_data["heldout"]),
        "--out",
        str(out),
        "--weights",
        str(trained_species["ckpt"]),
        "--classes",
        ",".join(SPECIES),
        "--threads",
        "2",
        "--batch-size",
        "16",
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_echocam_run_names_the_species_and_refuses_other_params(
    heldout_run, trained_species, species_data, tmp_path
):
    env = dict(os.environ)
    rows = [json.loads(line) for line in (heldout_run / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * HELDOUT_PER_CLASS
    right = [r["top_class_name"] == r["source_key"].split("/")[0] for r in rows]
    assert np.mean(right) >= 0.9
    # asking for another front end than the model's stops, with the reason
    bad = echocam(
        env,
        "run",
        str(species_data["heldout"]),
        "--out",
        str(tmp_path / "bad"),
        "--weights",
        str(trained_species["ckpt"]),
        "--n-mels",
        "128",
    )
    assert bad.returncode == 2 and "params_mismatch" in bad.stderr and "n_mels 128" in bad.stderr
    assert not (tmp_path / "bad" / "manifest.jsonl").exists()


def _iou(a, b, *, scale=lambda f: f) -> float:
    """IoU of two (start_s, end_s, low_hz, high_hz) boxes, frequency through ``scale``."""
    t = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    f = max(0.0, min(scale(a[3]), scale(b[3])) - max(scale(a[2]), scale(b[2])))
    area = lambda x: (x[1] - x[0]) * (scale(x[3]) - scale(x[2]))  # noqa: E731
    return t * f / (area(a) + area(b) - t * f)


def test_evidence_boxes_find_the_calls_of_heldout_clips(heldout_run, species_data):
    """Localisation, end to end from the detections table `echocam run` wrote, for the
    true species of each held-out clip: the peak lies in a call's box within half a CAM cell
    (the pointing game; measured 87-90 %), the evidence box overlaps a call (measured 100 %),
    and the call box (the loud pixels inside the evidence region nearest the peak) matches a
    call's true box with median IoU >= 0.3 (measured 0.69 on 60 clips: whistles 0.54, upsweeps
    0.86, trills 0.71).  The evidence box alone cannot reach that IoU: it is cell-sized (>= 0.7
    s x 37 mel bands at threshold 0.5) and the calls smaller (median 0.09-0.11)."""
    import librosa
    import pandas as pd

    from echocam.settings import Params
    from echocam.train.pointing import Tolerance, hit

    det = pd.read_parquet(heldout_run / "detections.parquet")
    clips = {c.name: c for c in species_data["held_clips"] if c.calls}  # name: species/clip.wav
    det = det[det["source_key"].isin(clips.keys())]
    det = det[det["class_name"] == det["source_key"].str.split("/").str[0]]
    assert len(det) == len(clips)  # one 5-s window per clip, the true species explained
    tol = Tolerance.half_cell(Params())
    pointed, inside, overlaps, iou_hz, iou_mel, iou_call = [], [], [], [], [], []
    for row in det.itertuples():
        calls = [c.box for c in clips[row.source_key].calls]
        box = (row.box_begin_s, row.box_end_s, row.box_low_hz, row.box_high_hz)
        call = (row.call_begin_s, row.call_end_s, row.call_low_hz, row.call_high_hz)
        iou_call.append(0.0 if np.isnan(call[0]) else max(_iou(call, c) for c in calls))
        pointed.append(any(hit(row, c, tolerance=tol) for c in calls))
        inside.append(
            any(c[0] <= row.peak_time_s <= c[1] and c[2] <= row.peak_freq_hz <= c[3] for c in calls)
        )
        overlaps.append(any(_iou(box, c) > 0 for c in calls))
        iou_hz.append(max(_iou(box, c) for c in calls))
        iou_mel.append(max(_iou(box, c, scale=librosa.hz_to_mel) for c in calls))
    print(
        f"\nevidence over {len(det)} held-out clips: peak within half a cell of a call "
        f"{np.mean(pointed):.0%}, inside one {np.mean(inside):.0%}; box overlaps a call "
        f"{np.mean(overlaps):.0%}, median IoU {np.median(iou_hz):.2f} (time x Hz), "
        f"{np.median(iou_mel):.2f} (time x mel); call box median IoU {np.median(iou_call):.2f}, "
        f"IoU >= 0.3 for {np.mean(np.array(iou_call) >= 0.3):.0%}",
        file=sys.stderr,
    )
    assert np.mean(pointed) >= 0.8
    assert np.mean(overlaps) >= 0.9
    assert np.median(iou_call) >= 0.3


@pytest.fixture(scope="module")
@marks("s3")
def s3():
    """One SeaweedFS S3 server for this module's tests."""
    from devtools.services import SeaweedS3

    with SeaweedS3() as server:
        yield server


# -- the CLI end to end: annotated long recordings in a bucket, a validation source, s3:// out --


@pytest.fixture(scope="module")
@marks("training")
def annotated(species_data, s3, tmp_path_factory):
    """Long recordings in a bucket (one per class, calls at known times) with a labels CSV of
    their annotated spans, a validation folder, and a 1-epoch `echocam train` on them into
    the bucket."""
    rng = np.random.default_rng(5)
    s3.create_bucket("annotated")
    client = s3.client()
    rows = ["key,label,start_s,end_s"]
    for k, name in enumerate(CLASSES):
        calls = 0 if name == synthetic.NOISE_CLASS else 3
        bg = species_data["train_backgrounds"][k]
        clip = synthetic.make_clip(
            species=name if calls else "", background=bg, rng=rng, duration_s=20.0, snr_db=6.0,
            n_calls=calls,
        )  # fmt: skip
        key = f"{k:02d}-long.wav"
        client.put_object(Bucket="annotated", Key=f"long/{key}", Body=clip.wav())
        spans = [(c.start_s, c.end_s) for c in clip.calls] or [(2.0, 4.0), (11.0, 17.5)]
        rows += [f"{key},{name},{a:.3f},{b:.3f}" for a, b in spans]
    client.put_object(Bucket="annotated", Key="labels.csv", Body="\n".join(rows).encode())
    val = _subset(species_data, tmp_path_factory.mktemp("val"), per_class=1)
    # the validation clips' calls as boxes: validation plays the pointing game on them
    held = {c.name: c for c in species_data["held_clips"]}
    val_rows = ["key,label,start_s,end_s,low_hz,high_hz"]
    for path in sorted(val.rglob("*.wav")):
        clip = held[str(path.relative_to(val))]
        boxes = [
            f"{k.start_s:.3f},{k.end_s:.3f},{k.low_hz:.0f},{k.high_hz:.0f}" for k in clip.calls
        ]
        val_rows += [f"{clip.name},{clip.species},{b}" for b in boxes] or [
            f"{clip.name},{clip.species},,,,"
        ]
    (val / "labels.csv").write_text("\n".join(val_rows) + "\n")
    env = {**os.environ, **s3.env()}
    proc = echocam(
        env,
        "train",
        "s3://annotated/long",
        "--labels",
        "s3://annotated/labels.csv",
        "--val",
        str(val),
        "--val-labels",
        str(val / "labels.csv"),
        "--out",
        "s3://annotated/models/species.pt",
        *["--init", "random", "--epochs", "1", "--epoch-windows", "8", "--batch-size", "4"],
        *["--threads", "2", "--quiet"],
    )
    return {
        "proc": proc, "rows": rows[1:], "val": val, "val_rows": val_rows[1:], "env": env,
        "client": client,
    }  # fmt: skip


def test_train_from_labels_csv_in_a_bucket_with_a_val_source(annotated):
    proc, client = annotated["proc"], annotated["client"]
    assert proc.returncode == 0, proc.stderr
    listed = client.list_objects_v2(Bucket="annotated", Prefix="models/")["Contents"]
    names = {o["Key"] for o in listed}
    assert names == {
        f"models/{n}" for n in ("species.pt", "species.resume.pt", "metrics.json", "confusion.png")
    }
    body = client.get_object(Bucket="annotated", Key="models/species.pt")["Body"].read()
    blob = torch.load(io.BytesIO(body), weights_only=True)
    assert blob["class_names"] == CLASSES
    d = blob["data"]
    assert d["train"]["source"] == "s3://annotated/long"
    assert d["train"]["examples"] == len(annotated["rows"]) and d["train"]["recordings"] == 4
    assert {c: v["examples"] for c, v in d["train"]["classes"].items()} == {
        c: sum(r.split(",")[1] == c for r in annotated["rows"]) for c in CLASSES
    }
    n_val = len(annotated["val_rows"])  # a span per call, and the Background clip whole
    assert n_val == 3 * 2 + 1
    assert d["val"]["examples"] == n_val and d["val"]["source"].endswith(annotated["val"].name)
    assert sum(d["windows_drawn"].values()) == 8
    cfg = blob["train_config"]
    assert cfg["labels"] == "s3://annotated/labels.csv" and cfg["val"] == str(annotated["val"])
    assert blob["metrics"]["epochs_completed"] == 1 and blob["metrics"]["val"]["n"] == n_val
    # the validation labels carry boxes: the pointing game is reported, in the log and metrics
    pointing = blob["metrics"]["val"]["pointing_game"]
    assert 0.0 <= pointing <= 1.0 and f"pointing game {pointing:.2f}" in proc.stdout


def test_weights_from_s3_load_the_trained_checkpoint(annotated, tmp_path):
    """`--weights s3://...` runs the checkpoint `echocam train --out s3://...` wrote."""
    from echocam.explain.model import state_dict_sha256

    assert annotated["proc"].returncode == 0, annotated["proc"].stderr
    body = annotated["client"].get_object(Bucket="annotated", Key="models/species.pt")
    blob = torch.load(io.BytesIO(body["Body"].read()), weights_only=True)
    proc = echocam(
        annotated["env"],
        "evaluate",
        str(annotated["val"]),
        "--weights",
        "s3://annotated/models/species.pt",
        "--out",
        str(tmp_path / "eval"),
        "--threads",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["model"]["weights"] == "s3://annotated/models/species.pt"
    assert m["model"]["sha256"] == state_dict_sha256(blob["state_dict"])
    assert sorted(m["per_class"]) == CLASSES and m["examples"] == 4


@pytest.fixture(scope="module")
@marks("redis", "worker")
def species_stack(trained_species, species_data, s3, tmp_path_factory, request):
    """Redis + SeaweedFS + one worker holding the trained checkpoint, read from the bucket."""
    from devtools.services import RedisServer

    with RedisServer() as redis_srv:
        s3.create_bucket("species")
        client = s3.client()
        for clip in species_data["held_clips"][:9]:
            body = (species_data["heldout"] / clip.name).read_bytes()
            client.put_object(Bucket="species", Key=f"in/{clip.name}", Body=body)
        client.upload_file(str(trained_species["ckpt"]), "species", "models/species.pt")
        env = {
            **os.environ,
            **s3.env(),
            "ECHOCAM_BROKER_URL": redis_srv.url,
            "ECHOCAM_QUEUE": own_queue(request),
            "ECHOCAM_WEIGHTS": "s3://species/models/species.pt",
            "ECHOCAM_THREADS": "2",
            "ECHOCAM_BATCH_SIZE": "16",
        }
        log_dir = tmp_path_factory.mktemp("worker")
        worker = start_worker(request, env, name="species", log_dir=log_dir)
        try:
            yield {"env": env, "s3": client, "worker": worker}
        finally:
            worker.stop()


@pytest.mark.slow
def test_real_worker_names_the_species(species_stack):
    """The checkpoint in a real worker: produce adopts its parameters and refuses others."""
    env, client, worker = species_stack["env"], species_stack["s3"], species_stack["worker"]
    bad = echocam(
        env, "produce", "s3://species/in", "--out", "s3://species/bad", "--window-seconds", "3"
    )
    assert bad.returncode == 2 and "window_seconds 3.0 (trained: 5.0)" in bad.stderr, bad.stderr
    proc = echocam(
        env,
        "produce",
        "s3://species/in",
        "--out",
        "s3://species/cams",
        "--wait",
        "--timeout",
        "600",
        "--task-size",
        "3",
    )
    assert proc.returncode == 0, proc.stderr + worker.log_tail()
    body = client.get_object(Bucket="species", Key="cams/manifest.jsonl")["Body"].read()
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert len(rows) == 9 and all(r["status"] == "ok" for r in rows)
    right = [r["top_class_name"] == r["source_key"].split("/")[0] for r in rows]
    assert np.mean(right) >= 8 / 9
