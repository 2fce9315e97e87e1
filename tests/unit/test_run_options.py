"""Options of `echocam run` (local mode) as the docs state them: ``--classes`` explains the named
classes in the order given (an unknown one exits 2), random weights are flagged in every output,
the Parquet manifest holds the JSONL rows with the schema's types, and ``--force`` redoes every
recording while a plain re-run rewrites nothing.

The console script's ``main`` in this process, over real recordings from ``samples/``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers import SAMPLES, SPECIES, wav_bytes

pytestmark = pytest.mark.slow  # each test runs the model over recordings
CLIPS = ["S4A03895_20190522_053000.wav", "S4A03895_20190522_060000.wav"]  # 10 s each, 22 kHz


def cli(*args: str) -> subprocess.CompletedProcess:
    """``echocam ARGS``: the console script's ``main`` (its return value is the exit code), run
    in this process to spare an interpreter and torch import per call; no ``ECHOCAM_*``
    variables from this environment, and torch's thread count restored afterwards."""
    from echocam_cli import main

    out, err = io.StringIO(), io.StringIO()
    ours = [k for k in os.environ if k.startswith("ECHOCAM_")]
    threads = torch.get_num_threads()
    with mock.patch.dict(os.environ), redirect_stdout(out), redirect_stderr(err):
        for k in ours:
            del os.environ[k]
        try:
            code = main(list(args))
        finally:
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["echocam", *args], code, out.getvalue(), err.getvalue())


def test_classes_explains_the_named_classes_in_the_order_given(tmp_path, species_checkpoint):
    out = tmp_path / "out"
    names = f"{SPECIES[2]},{SPECIES[0]}"  # ids 2 and 0: neither sorted nor the top-k
    proc = cli(
        "run", str(SAMPLES / CLIPS[0]), "--out", str(out), "--weights", str(species_checkpoint),
        "--classes", names, "--threads", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((out / CLIPS[0] / "record.json").read_text())
    assert rec["status"] == "ok" and rec["n_windows"] == 2
    with np.load(out / rec["outputs"]["cam"]) as npz:
        assert npz["class_ids"].tolist() == [[2, 0], [2, 0]]
        assert npz["cams"].shape == (2, 2, 7, 7)
        assert npz["class_names"].tolist() == [[SPECIES[2], SPECIES[0]]] * 2
    for window in rec["windows"]:
        assert [(c["class_id"], c["class_name"]) for c in window["explained"]] == [
            (2, SPECIES[2]),
            (0, SPECIES[0]),
        ]
    assert rec["image_sizes"]["overlay"][0] == 2 * 260  # one band per named class
    assert rec["model"]["weights_kind"] == "checkpoint" and rec["model"]["random_weights"] is False


def test_an_unknown_class_name_fails_with_a_clear_message_and_exit_code_2(
    tmp_path, species_checkpoint
):
    out = tmp_path / "out"
    proc = cli(
        "run", str(SAMPLES / CLIPS[0]), "--out", str(out), "--weights", str(species_checkpoint),
        "--classes", f"{SPECIES[1]},Dodo", "--threads", "2",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "unknown classes ['Dodo']" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(out.rglob("record.json"))


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """``echocam run --weights random`` over two real recordings and two bad inputs."""
    src = tmp_path_factory.mktemp("random-in")
    (src / "site").mkdir()
    for name in CLIPS:
        shutil.copy(SAMPLES / name, src / "site" / name)
    (src / "bad").mkdir()
    (src / "bad" / "empty.wav").write_bytes(b"")
    (src / "bad" / "silent.wav").write_bytes(wav_bytes(np.zeros(22050, np.float32), 22050))
    out = tmp_path_factory.mktemp("random-out")
    args = ["--weights", "random", "--weights-seed", "7", "--top-k", "2", "--chunk-size", "2"]
    args += ["--batch-size", "8", "--threads", "2"]
    proc = cli("run", str(src), "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    return src, out, args


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_random_weights_are_flagged_in_every_output_that_readme_lists(random_run):
    _, out, _ = random_run
    run = json.loads((out / "run.json").read_text())
    model = run["model"]
    assert model["weights"] == "random" and model["weights_kind"] == "random"
    assert model["random_weights"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == model
    rows = jsonl(out / "manifest.jsonl")
    assert len(rows) == 4
    assert {(r["weights_kind"], r["model_sha256"]) for r in rows} == {("random", model["sha256"])}
    parquet = pq.read_table(out / "manifest.parquet").to_pydict()
    assert set(parquet["weights_kind"]) == {"random"}
    for row in rows:  # ok and failed records alike
        rec = json.loads((out / row["record_key"]).read_text())
        assert rec["model"] == model, row["source_key"]
        if row["status"] == "ok":
            # docs/reference/outputs.md lists model_sha256 in cam.npz, not weights_kind: the sha
            # is the flag there
            with np.load(out / row["cam_key"]) as npz:
                assert str(npz["model_sha256"]) == model["sha256"]
    assert sorted(r["status"] for r in rows) == ["failed", "failed", "ok", "ok"]


#: The manifest's columns as docs/reference/outputs.md lists them (generated from
#: echocam.bucket.manifest.SCHEMA), with their types.
MANIFEST_COLUMNS = {
    "source_key": pa.string(),
    "status": pa.string(),
    "error_code": pa.string(),
    "error_message": pa.string(),
    "source_size": pa.int64(),
    "source_etag": pa.string(),
    "duration_s": pa.float64(),
    "n_windows": pa.int64(),
    "top_class_id": pa.int64(),
    "top_class_name": pa.string(),
    "top_probability": pa.float64(),
    "top_predictions": pa.list_(
        pa.struct(
            [("class_id", pa.int64()), ("class_name", pa.string()), ("probability", pa.float64())]
        )
    ),
    "record_key": pa.string(),
    "spectrogram_key": pa.string(),
    "overlay_key": pa.string(),
    "cam_key": pa.string(),
    "embeddings_key": pa.string(),
    "fingerprint": pa.string(),
    "model_sha256": pa.string(),
    "weights_kind": pa.string(),
    "finished_at": pa.string(),
}


def test_manifest_parquet_holds_the_jsonl_rows_with_the_schema_types(random_run):
    _, out, _ = random_run
    rows = jsonl(out / "manifest.jsonl")
    table = pq.read_table(out / "manifest.parquet")
    assert [(f.name, f.type) for f in table.schema] == list(MANIFEST_COLUMNS.items())
    assert [list(r) for r in rows] == [list(MANIFEST_COLUMNS)] * len(rows)  # JSONL: same keys
    assert table.to_pylist() == rows  # every column of every row, in order
    # both kinds of row are in there: values and nulls
    ok = next(r for r in rows if r["status"] == "ok")
    failed = next(r for r in rows if r["status"] == "failed")
    assert ok["top_predictions"] and ok["duration_s"] > 0 and ok["error_code"] is None
    assert failed["cam_key"] is None and failed["error_code"] in ("empty", "silent")


def test_local_force_redoes_every_recording_and_without_it_nothing_is_rewritten(
    random_run, tmp_path
):
    src, done, args = random_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    records = sorted(out.rglob("record.json"))
    assert len(records) == 4
    before = {p: p.read_bytes() for p in records}
    old_ids = {json.loads(b)["run_id"] for b in before.values()}

    proc = cli("run", str(src), "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    assert {p: p.read_bytes() for p in records} == before  # nothing rewritten

    proc = cli("run", str(src), "--out", str(out), *args, "--force")
    assert proc.returncode == 0, proc.stderr
    assert sorted(out.rglob("record.json")) == records
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert run_id not in old_ids
    after = [json.loads(p.read_text()) for p in records]
    assert [r["run_id"] for r in after] == [run_id] * 4  # every recording redone, failed ones too
    assert {r["source_key"]: r["status"] for r in after} == {
        json.loads(b)["source_key"]: json.loads(b)["status"] for b in before.values()
    }
