"""`echocam run` end to end, as a user runs it: a subprocess over a directory of real recordings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import RECORDINGS, SPECIES, chirp, needs_shared, wav_bytes
from PIL import Image

GOOD = [
    "spinetail_44k.wav",
    "S4A03895_20190522_000000.wav",
    "S4A03895_20190522_060000.wav",
    "XC563936_soundscape_48k.mp3",
]
BAD = {
    "bad/empty.wav": (b"", "empty"),
    "bad/text.wav": (b"hello, I am not a WAV file\n" * 10, "undecodable"),
    "bad/silent.wav": (wav_bytes(np.zeros(22050, np.float32), 22050), "silent"),
    "bad/short.wav": (wav_bytes(chirp(0.02, 22050), 22050), "too_short"),
}


def echocam(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "echocam_cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, species_checkpoint):
    src = tmp_path_factory.mktemp("in")
    (src / "field" / "site 1").mkdir(parents=True)
    for i, name in enumerate(GOOD):
        dest = src / ("field/site 1" if i % 2 else "field") / name
        shutil.copy(RECORDINGS / name, dest)
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
        str(species_checkpoint),
        "--top-k",
        "2",
        "--save-inputs",
        "--batch-size",
        "8",
        "--threads",
        "2",
        "--task-size",
        "3",
    ]
    proc = echocam("run", *args)
    assert proc.returncode == 0, proc.stderr
    return src, out, args


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@needs_shared
def test_every_input_has_exactly_one_manifest_row(run_dir):
    src, out, _ = run_dir
    rows = manifest(out)
    audio = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.*") if p.suffix != ".txt")
    assert sorted(r["source_key"] for r in rows) == audio
    assert pq.read_table(out / "manifest.parquet").num_rows == len(audio)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["by_status"] == {"ok": len(GOOD), "failed": len(BAD)}
    assert summary["by_error_code"] == {code: 1 for _, code in BAD.values()}


@needs_shared
def test_failures_are_rows_with_their_error_codes(run_dir):
    _, out, _ = run_dir
    rows = {r["source_key"]: r for r in manifest(out)}
    for key, (_, code) in BAD.items():
        assert rows[key]["status"] == "failed" and rows[key]["error_code"] == code
        rec = json.loads((out / key / "record.json").read_text())
        assert rec["error_code"] == code and rec["error_message"]
        assert not (out / key / "overlay.png").exists()


@needs_shared
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
        assert spec.size == (last_start + frames, 260) and spec.mode == "RGB"
        assert ov.size == (last_start + frames, 2 * 260)  # one band per explained class
        assert w == int(np.ceil(rec["duration_s"] / 5 - 1e-9))
        with np.load(out / rec["outputs"]["cam"]) as npz:
            assert npz["cams"].shape == (w, 2, 7, 7) and npz["cams"].dtype == np.float32
            assert npz["spectrogram_db"].shape == (w, 260, frames)
            assert npz["class_ids"].shape == (w, 2)
            assert json.loads(str(npz["params"]))["top_k"] == 2
            assert str(npz["model_sha256"]) == rec["model"]["sha256"]
        assert len(rec["outputs"]["inputs"]) == w
        for win in rec["windows"]:
            assert [p["class_name"] for p in win["predictions"]][0] in SPECIES
            assert win["predictions"][0]["probability"] >= win["predictions"][1]["probability"]
        assert rec["top_predictions"][0]["class_name"] in SPECIES
        assert rec["model"]["weights_kind"] == "checkpoint" and rec["fingerprint"]


@needs_shared
def test_saved_inputs_reproduce_the_cam_with_torchvision_alone(run_dir, species_checkpoint):
    from torchvision import transforms
    from torchvision.models import resnet18

    _, out, _ = run_dir
    rec = json.loads((out / "field/spinetail_44k.wav/record.json").read_text())
    blob = torch.load(species_checkpoint, weights_only=True)
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


@needs_shared
def test_second_run_skips_everything_done(run_dir):
    _, out, args = run_dir
    before = {p: p.read_bytes() for p in out.rglob("record.json")}
    proc = echocam("run", *args)
    assert proc.returncode == 0, proc.stderr
    after = {p: p.read_bytes() for p in out.rglob("record.json")}
    assert before == after  # nothing redone, nothing rewritten
    assert len(manifest(out)) == len(GOOD) + len(BAD)


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
        "--n-mels",
        "--hop-seconds",
    ):
        assert flag in proc.stdout
    bad = echocam("run", "/nonexistent", "--out", "/tmp/x", "--weights", "/nonexistent.pt")
    assert bad.returncode == 2 and "weights_unavailable" in bad.stderr


@needs_shared
def test_api_returns_arrays_and_images(species_checkpoint):
    from echocam import explain_file
    from echocam.errors import EchoCamError

    ex = explain_file(
        RECORDINGS / "spinetail_44k.wav", weights=str(species_checkpoint), device="cpu", top_k=1
    )
    assert ex.record["status"] == "ok" and ex.overlay.size == ex.spectrogram.size
    assert ex.arrays["cams"].shape[:2] == (ex.record["n_windows"], 1)
    with pytest.raises(EchoCamError) as exc:
        from echocam import explain_bytes

        explain_bytes(b"", weights=str(species_checkpoint), device="cpu")
    assert exc.value.code == "empty"
