"""`echocam run` end to end, as a user runs it: a subprocess over a directory of real recordings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from scipy.ndimage import map_coordinates

from echocam.signal.colormaps import lut
from tests.helpers import SPECIES, available, chirp, marks, recording, wav_bytes

# Without ../shared, the two that samples/ holds: the module still runs end to end.
GOOD = available(
    [
        "spinetail_44k.wav",
        "S4A03895_20190522_000000.wav",
        "S4A03895_20190522_060000.wav",
        "XC563936_soundscape_48k.mp3",
    ]
)
assert len(GOOD) >= 2, "real recordings missing from ../shared and samples/"
BAD = {
    "bad/empty.wav": (b"", "empty"),
    "bad/text.wav": (b"hello, I am not a WAV file\n" * 10, "undecodable"),
    "bad/silent.wav": (wav_bytes(np.zeros(22050, np.float32), 22050), "silent"),
    "bad/short.wav": (wav_bytes(chirp(0.02, 22050), 22050), "too_short"),
}

# The run's model: 3 classes, all explained (top-k 3), so every window's full probability vector
# is in cam.npz; its names are not SPECIES (nor a permutation of them), so a name that does not
# come from the model's own class_names[class_id] shows.
CLASS_NAMES = ["Pardalotus striatus", "Malurus cyaneus", "Dacelo novaeguineae"]
assert not set(CLASS_NAMES) & set(SPECIES)


def echocam(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "echocam_cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from torchvision.models import resnet18

    from echocam.explain.model import save_checkpoint

    torch.manual_seed(4321)
    net = resnet18(weights=None, num_classes=len(CLASS_NAMES))
    path = tmp_path_factory.mktemp("ckpt") / "three-birds.pt"
    save_checkpoint(path, net.state_dict(), CLASS_NAMES)
    return path


@pytest.fixture(scope="module")
@marks("slow")
def run_dir(tmp_path_factory, checkpoint):
    src = tmp_path_factory.mktemp("in")
    (src / "field" / "site 1").mkdir(parents=True)
    for i, name in enumerate(GOOD):
        dest = src / ("field/site 1" if i % 2 else "field") / name
        shutil.copy(recording(name), dest)
    for key, (data, _) in BAD.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    (src / "field" / "notes.txt").write_text("not audio: skipped by the extension filter")
    out = tmp_path_factory.mktemp("out")
    args = [
        str(src),
        "--out",
        str(out),
        "--weights",
        str(checkpoint),
        "--top-k",
        "3",
        "--save-inputs",
        "--outputs",  # everything, the overlay lossless: recomputed exactly below
        "spectrogram,overlay,cam,db,detections",
        "--overlay-format",
        "png",
        "--batch-size",
        "8",
        "--threads",
        "2",
        "--chunk-size",
        "3",
    ]
    proc = echocam("run", *args)
    assert proc.returncode == 0, proc.stderr
    return src, out, args


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_every_input_has_exactly_one_manifest_row(run_dir):
    src, out, _ = run_dir
    rows = manifest(out)
    audio = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.*") if p.suffix != ".txt")
    assert sorted(r["source_key"] for r in rows) == audio
    assert pq.read_table(out / "manifest.parquet").num_rows == len(audio)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["by_status"] == {"ok": len(GOOD), "failed": len(BAD)}
    assert summary["by_error_code"] == {code: 1 for _, code in BAD.values()}


def test_failures_are_rows_with_their_error_codes(run_dir):
    _, out, _ = run_dir
    rows = {r["source_key"]: r for r in manifest(out)}
    for key, (_, code) in BAD.items():
        assert rows[key]["status"] == "failed" and rows[key]["error_code"] == code
        rec = json.loads((out / key / "record.json").read_text())
        assert rec["error_code"] == code and rec["error_message"]
        assert not (out / key / "overlay.png").exists()


def test_good_recordings_have_complete_outputs_of_the_right_sizes(run_dir):
    _, out, _ = run_dir
    for row in manifest(out):
        if row["status"] != "ok":
            continue
        rec = json.loads((out / row["record_key"]).read_text())
        w = rec["n_windows"]
        spec = Image.open(out / rec["outputs"]["spectrogram"])
        ov = Image.open(out / rec["outputs"]["overlay"])
        frames = 1 + round(rec["window_seconds"] * 22050) // 200
        last_start = round(rec["windows"][-1]["start_s"] * 22050 / 200)
        assert spec.size == (last_start + frames, 260) and spec.mode == "P"  # magma palette
        assert ov.size == (last_start + frames, 3 * 260)  # one band per explained class
        assert w == int(np.ceil(rec["duration_s"] / 5 - 1e-9))
        with np.load(out / rec["outputs"]["cam"]) as npz:
            assert npz["cams"].shape == (w, 3, 7, 7) and npz["cams"].dtype == np.float32
            assert npz["spectrogram_db"].shape == (w, 260, frames)
            assert npz["spectrogram_db"].dtype == np.float16
            assert npz["class_ids"].shape == (w, 3)
            assert json.loads(str(npz["params"]))["top_k"] == 3
            assert str(npz["model_sha256"]) == rec["model"]["sha256"]
        assert len(rec["outputs"]["inputs"]) == w
        assert rec["outputs"]["overlay"].endswith("/overlay.png")
        for win in rec["windows"]:
            probs = [p["probability"] for p in win["predictions"]]
            assert probs == sorted(probs, reverse=True)
        assert rec["model"]["weights_kind"] == "checkpoint" and rec["fingerprint"]


def test_saved_inputs_reproduce_the_cam_with_torchvision_alone(run_dir, checkpoint):
    from torchvision import transforms
    from torchvision.models import resnet18

    _, out, _ = run_dir
    rec = json.loads((out / "field/spinetail_44k.wav/record.json").read_text())
    blob = torch.load(checkpoint, weights_only=True)
    net = resnet18(num_classes=3)
    net.load_state_dict(blob["state_dict"])
    net.eval()
    to_input = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    x = torch.stack(
        [to_input(Image.open(out / k).convert("RGB")) for k in rec["outputs"]["inputs"]]
    )
    feats = {}
    net.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    with torch.no_grad():
        net(x)
    with np.load(out / rec["outputs"]["cam"]) as npz:
        ids, cams = npz["class_ids"], npz["cams"]
    w = net.fc.weight.detach()[torch.from_numpy(ids)]  # (windows, k, 512)
    ref = torch.einsum("bkc,bchw->bkhw", w, feats["a"])
    np.testing.assert_allclose(cams, ref.numpy(), rtol=1e-4, atol=1e-3)


def ok_records(out) -> list[dict]:
    rows = [r for r in manifest(out) if r["status"] == "ok"]
    assert rows
    return [json.loads((out / r["record_key"]).read_text()) for r in rows]


def full_probabilities(npz) -> tuple[np.ndarray, np.ndarray]:
    """(windows, classes) probabilities and logits from cam.npz's explained classes (all 3)."""
    ids = npz["class_ids"]
    assert (np.sort(ids, axis=1) == np.arange(len(CLASS_NAMES))).all()  # every class, once
    probs, logits = np.zeros(ids.shape), np.zeros(ids.shape)
    np.put_along_axis(probs, ids, npz["probabilities"], axis=1)
    np.put_along_axis(logits, ids, npz["logits"], axis=1)
    return probs, logits


def test_top_predictions_are_the_mean_of_the_window_probabilities(run_dir):
    _, out, _ = run_dir
    for rec in ok_records(out):
        with np.load(out / rec["outputs"]["cam"]) as npz:
            probs, logits = full_probabilities(npz)
        # the probabilities are the softmax of the logits, and the windows' records carry them
        softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
        np.testing.assert_allclose(probs, softmax / softmax.sum(1, keepdims=True), atol=1e-6)
        for win, p in zip(rec["windows"], probs, strict=True):
            got = {q["class_id"]: q["probability"] for q in win["predictions"]}
            assert got.keys() == set(range(len(CLASS_NAMES)))
            np.testing.assert_allclose([got[c] for c in range(len(p))], p, atol=1e-6)
        mean = probs.mean(axis=0)
        top = rec["top_predictions"]
        assert [t["class_id"] for t in top] == np.argsort(-mean).tolist()
        np.testing.assert_allclose([t["probability"] for t in top], np.sort(mean)[::-1], atol=2e-6)
        assert rec["n_windows"] > 1  # a mean over several windows, not one window's values


def test_class_names_come_from_the_models_class_ids(run_dir):
    _, out, _ = run_dir
    for rec in ok_records(out):
        with np.load(out / rec["outputs"]["cam"]) as npz:  # the explained classes' names
            ids, names = npz["class_ids"], npz["class_names"]
            assert names.shape == ids.shape
            assert names.tolist() == [[CLASS_NAMES[i] for i in row] for row in ids.tolist()]
        predictions = [p for win in rec["windows"] for p in win["predictions"] + win["explained"]]
        for p in predictions + rec["top_predictions"]:
            assert p["class_name"] == CLASS_NAMES[p["class_id"]], p
    for row in manifest(out):
        if row["status"] == "ok":
            assert row["top_class_name"] == CLASS_NAMES[row["top_class_id"]]
    assert json.loads((out / "run.json").read_text())["class_names"] == CLASS_NAMES  # once


def minmax(x: torch.Tensor) -> torch.Tensor:
    x = x - x.amin(dim=(-2, -1), keepdim=True)
    return x / (x.amax(dim=(-2, -1), keepdim=True) + 1e-7)


def test_overlay_is_the_documented_blend_of_spectrogram_and_plasma_cam(run_dir):
    """overlay.png, recomputed from spectrogram.png and cam.npz's raw CAMs: display map (ReLU,
    min-max, bilinear to the spectrogram's size with layer4 cell j centred on model-image pixel
    32j, min-max; here by scipy's map_coordinates), plasma, blended at alpha; the windows
    stitched along time, one band per explained class.  ±1 level for rounding; a map value within
    float error of a colour-table boundary may take the neighbouring entry (on a handful of
    pixels: the batched and the single-window upsampling differ in the last bits)."""
    _, out, _ = run_dir
    plasma = lut("plasma").astype(np.float32)
    for rec in ok_records(out):
        spec = np.asarray(Image.open(out / rec["outputs"]["spectrogram"]).convert("RGB"))
        ov = np.asarray(Image.open(out / rec["outputs"]["overlay"]).convert("RGB")).astype(int)
        with np.load(out / rec["outputs"]["cam"]) as npz:
            cams, starts = npz["cams"], npz["window_starts_s"]
            frames = npz["spectrogram_db"].shape[-1]
            params = json.loads(str(npz["params"]))
        alpha, hop = params["alpha"], params["hop_length"]
        assert alpha == 0.5
        n_mels, k = spec.shape[0], cams.shape[1]
        assert ov.shape == (k * n_mels, spec.shape[1], 3)
        # the blend with the colour-table entry below, at and above the computed one
        expected = np.zeros((3, *ov.shape), np.float32)
        columns = np.rint(starts * rec["sample_rate"] / hop).astype(int)
        for j, c in enumerate(columns):  # later windows overwrite shared columns, as stitched
            maps = minmax(torch.from_numpy(cams[j]).relu()).numpy()  # (k, 7, 7)
            h, w = maps.shape[-2:]
            rows = (np.arange(n_mels) + 0.5) * h / n_mels - 1 / 64  # cell coordinates
            cols = (np.arange(frames) + 0.5) * w / frames - 1 / 64
            grid = np.meshgrid(rows, cols, indexing="ij")
            maps = np.stack([map_coordinates(m, grid, order=1, mode="nearest") for m in maps])
            maps = minmax(torch.from_numpy(maps)).numpy()  # (k, n_mels, frames) in [0, 1]
            index = np.clip(np.floor(maps * 256), 0, 255).astype(int)
            base = spec[:, c : c + frames].astype(np.float32)
            for n, step in enumerate((-1, 0, 1)):
                heat = plasma[np.clip(index + step, 0, 255)]
                blend = (1 - alpha) * base + alpha * heat  # (k, n_mels, frames, 3)
                expected[n, :, c : c + frames] = blend.reshape(k * n_mels, frames, 3)
        diff = np.abs(ov - np.rint(expected))  # (3, k*n_mels, t, 3)
        exact = diff[1].max(axis=-1) <= 1
        assert exact.mean() > 1 - 1e-4, (rec["source_key"], 1 - exact.mean())
        assert diff.max(axis=-1).min(axis=0).max() <= 1, rec["source_key"]


def test_evidence_is_that_of_the_display_maps_of_the_saved_cams(run_dir):
    """Every window x class's peak and box in the record is ``localise.evidence`` of the display
    map of cam.npz's raw CAM, made again here one window at a time, although the run took them
    from the maps its device stage drew the overlay with (batched, thresholded there).  The
    call box comes from the float16 dB cam.npz keeps (the run had float32): a pixel within
    0.03 dB of a call threshold may fall the other way, so most, not all, must agree."""
    from echocam.bucket.detections import CALL, EVIDENCE
    from echocam.explain.cam import display_maps
    from echocam.explain.localise import Axes, evidence
    from echocam.settings import Params

    _, out, _ = run_dir
    checked, calls, same_call = 0, 0, 0
    for rec in ok_records(out):
        with np.load(out / rec["outputs"]["cam"]) as npz:
            cams, starts = npz["cams"], npz["window_starts_s"]
            dbs = npz["spectrogram_db"].astype(np.float32)
            p = Params.from_dict(json.loads(str(npz["params"])))
        axes = Axes.for_params(p, frames=dbs.shape[-1])
        for j, window in enumerate(rec["windows"]):
            maps = display_maps(torch.from_numpy(cams[j : j + 1]), size=dbs.shape[1:])
            for c, explained in enumerate(window["explained"]):
                e = evidence(maps[0, c].numpy(), axes=axes, offset_s=float(starts[j]),
                             threshold=p.box_threshold, db=dbs[j])  # fmt: skip
                for name in EVIDENCE:
                    if name not in CALL:
                        assert explained[name] == pytest.approx(getattr(e, name), abs=1e-6), name
                got = [np.nan if explained[n] is None else explained[n] for n in CALL]
                calls += not np.isnan(got[0])
                same_call += np.allclose(got, [getattr(e, n) for n in CALL], atol=1e-6,
                                         equal_nan=True)  # fmt: skip
                checked += 1
    assert checked >= 3 * len(GOOD)
    assert calls >= checked // 2  # real recordings: a sound stands out in most regions
    assert same_call >= 0.9 * checked


def test_second_run_skips_everything_done(run_dir, tmp_path):
    _, done, args = run_dir
    out = tmp_path / "out"  # a copy: the module's run stays as it was for the other tests
    shutil.copytree(done, out)
    args = [str(out) if a == str(done) else a for a in args]
    before = {p: p.read_bytes() for p in out.rglob("record.json")}
    proc = echocam("run", *args)
    assert proc.returncode == 0, proc.stderr
    after = {p: p.read_bytes() for p in out.rglob("record.json")}
    assert before == after  # nothing redone, nothing rewritten
    assert len(manifest(out)) == len(GOOD) + len(BAD)


@pytest.mark.slow
def test_help_is_complete():
    proc = echocam("run", "--help")
    for flag in (
        "--weights",
        "--device",
        "--window-seconds",
        "--top-k",
        "--classes",
        "--batch-size",
        "--threads",
        "--save-inputs",
        "--outputs",
        "--overlay-format",
        "--overlay-quality",
        "--n-mels",
        "--hop-seconds",
    ):
        assert flag in proc.stdout
    bad = echocam("run", "/nonexistent", "--out", "/tmp/x", "--weights", "/nonexistent.pt")
    assert bad.returncode == 2 and "weights_unavailable" in bad.stderr


def test_api_returns_arrays_and_images(species_checkpoint):
    from echocam import explain_file
    from echocam.errors import EchoCamError

    ex = explain_file(
        recording("spinetail_44k.wav"), weights=str(species_checkpoint), device="cpu", top_k=1
    )
    assert ex.record["status"] == "ok" and ex.overlay.size == ex.spectrogram.size
    assert ex.overlay.format == "JPEG" and "spectrogram_db" not in ex.arrays  # the defaults
    assert ex.arrays["cams"].shape[:2] == (ex.record["n_windows"], 1)
    with pytest.raises(EchoCamError) as exc:
        from echocam import explain_bytes

        explain_bytes(b"", weights=str(species_checkpoint), device="cpu")
    assert exc.value.code == "empty"
