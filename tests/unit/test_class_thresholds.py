"""Per-class minimum probabilities: ``--min-probability thresholds.json`` in the run parameters,
the fingerprint, and every table a run writes (a real local run with a seeded species model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from echocam.bucket import detections
from echocam.errors import InvalidParams
from echocam.settings import Params, fingerprint
from echocam_cli import _params, build_parser
from tests.helpers import SPECIES

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "S4A03895_20190522_053000.wav"


def test_a_class_map_is_a_param_and_runs_before_it_keep_their_fingerprint():
    plain = Params()
    assert "class_min_probability" not in json.dumps(  # left out at its default: {}
        {k: v for k, v in plain.to_dict().items() if v != {}}
    )
    a = Params(class_min_probability=(("Wren", 0.8), ("Robin", 0.5)))
    b = Params.from_dict(json.loads(json.dumps(a.to_dict())))  # what run.json and tasks carry
    assert a == b and a.to_dict()["class_min_probability"] == {"Robin": 0.5, "Wren": 0.8}
    assert fingerprint(a, "ab" * 32) == fingerprint(b, "ab" * 32) != fingerprint(plain, "ab" * 32)
    assert fingerprint(plain, "ab" * 32) == fingerprint(Params(class_min_probability=()), "ab" * 32)
    assert a.min_probability_of("Wren") == 0.8 and a.min_probability_of("Tit") == 0.0
    with pytest.raises(ValueError, match="within"):
        Params(class_min_probability=(("Wren", 1.5),))
    env = Params.from_env({"ECHOCAM_CLASS_MIN_PROBABILITY": "Wren=0.8, Robin=0.5"})
    assert env == a


def test_the_flag_takes_a_probability_or_a_thresholds_file(tmp_path, monkeypatch):
    doc = {"format": "echocam-thresholds/1", "thresholds": {"0.90": {"Wren": 0.4}, "0.95": {}}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    parser = build_parser()

    def params(*flags):
        return _params(parser.parse_args(["run", "in", "--out", "o", *flags]))

    assert params("--min-probability", "0.2").min_probability == 0.2
    got = params("--min-probability", str(path), "--precision", "0.9")
    assert got.class_min_probability == (("Wren", 0.4),) and got.min_probability == 0.0
    assert params("--min-probability", str(path)).class_min_probability == ()  # 0.95: none
    monkeypatch.setenv("ECHOCAM_MIN_PROBABILITY", "0.1")  # the floor of the other classes
    got = params("--min-probability", str(path), "--precision", "0.9")
    assert got.min_probability == 0.1 and got.min_probability_of("Wren") == 0.4
    with pytest.raises(InvalidParams, match="precision 0.99"):
        params("--min-probability", str(path), "--precision", "0.99")
    with pytest.raises(InvalidParams, match="--precision goes with"):
        params("--min-probability", "0.2", "--precision", "0.9")
    produce = parser.parse_args(["produce", "s3://a/b", "--out", "s3://c/d", "--min-probability",
                                 str(path), "--precision", "0.9"])  # fmt: skip
    assert _params(produce).class_min_probability == (("Wren", 0.4),)


def test_detection_rows_use_the_class_minimum():
    record = {
        "status": "ok", "source_key": "k", "record_key": "k/record.json", "window_seconds": 5.0,
        "windows": [{"start_s": 0.0, "explained": [
            {"class_name": n, "class_id": i, "probability": p, "logit": 0.0}
            for i, (n, p) in enumerate([("Wren", 0.5), ("Robin", 0.5), ("Tit", 0.05)])
        ]}],
    }  # fmt: skip
    kept = detections.rows(record, min_probability=0.1, class_min_probability={"Wren": 0.6})
    assert [d["class_name"] for d in kept] == ["Robin"]


@pytest.mark.slow
def test_a_run_with_a_thresholds_file_leaves_the_class_out_of_every_table(
    tmp_path, species_checkpoint
):
    blocked = SPECIES[0]  # three classes near 1/3 each: nothing of it reaches 0.99
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({blocked: 0.99}))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "echocam_cli", "run", str(SAMPLE), "--out", str(out),
         "--weights", str(species_checkpoint), "--top-k", "3", "--min-probability", str(path),
         "--threads", "2"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["params"]["class_min_probability"] == {blocked: 0.99}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_min_probability"] == {blocked: 0.99}
    (record,) = [json.loads(p.read_text()) for p in out.rglob("record.json")]
    everything = list(detections.rows(record))
    assert blocked in {d["class_name"] for d in everything}  # the record keeps every class
    table = pq.read_table(out / "detections.parquet").to_pylist()
    assert len(table) == sum(d["class_name"] != blocked for d in everything) > 0
    emb = pq.read_table(out / "embeddings.parquet", columns=["class_name"]).to_pylist()
    names = {r["class_name"] for r in emb}
    assert blocked not in names and None in names and len(names) == 3  # windows stay
    (sels,) = out.rglob("selections.txt")
    assert blocked not in sels.read_text() and SPECIES[1] in sels.read_text()
