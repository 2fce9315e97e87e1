"""Detections as tables: rows from records, merged selections, Raven and Audacity files, and the
run-level detections.parquet / detections.csv that the manifest step writes (local mode)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from devtools.stack import ROOT
from echocam.bucket import detections
from echocam.bucket.detections import RAVEN_COLUMNS, Selection
from echocam.explain.localise import CALL_GAP_S
from echocam.settings import Params
from tests.helpers import marks

HOP_S = 200 / 22050
NAME = "Ninox boobook – ‘Mopoke’ 鸮"  # unicode, a dash and quotes: must survive every writer


def record(windows, *, source_key="site/a.wav", status="ok"):
    """A record with ``windows``: [(start_s, [(class_id, name, prob, box_begin, box_end)])]."""
    return {
        "source_key": source_key,
        "record_key": f"{source_key}/record.json",
        "status": status,
        "window_seconds": 5.0,
        "windows": [
            {
                "start_s": start,
                "explained": [
                    {
                        "class_id": cid,
                        "class_name": name,
                        "probability": p,
                        "logit": 1.5,
                        "peak_time_s": (b0 + b1) / 2,
                        "peak_freq_hz": 3000.0,
                        "box_begin_s": b0,
                        "box_end_s": b1,
                        "box_low_hz": 2000.0 + cid,
                        "box_high_hz": 4000.0 + cid,
                    }
                    for cid, name, p, b0, b1 in classes
                ],
            }
            for start, classes in windows
        ],
    }


def test_rows_one_per_window_and_class_filtered_by_probability():
    rec = record(
        [
            (0.0, [(1, NAME, 0.9, 1.0, 4.99), (2, "b", 0.05, 0.5, 1.0)]),
            (5.0, [(1, NAME, 0.8, 5, 6)]),
        ]
    )
    rows = list(detections.rows(rec))
    assert [(r["begin_s"], r["end_s"], r["class_id"]) for r in rows] == [
        (0.0, 5.0, 1),
        (0.0, 5.0, 2),
        (5.0, 10.0, 1),
    ]
    assert set(rows[0]) == set(detections.SCHEMA.names)
    kept = list(detections.rows(rec, min_probability=0.1))
    assert [r["class_id"] for r in kept] == [1, 1]
    assert list(detections.rows({**rec, "status": "failed"})) == []


def test_boxes_that_touch_across_windows_merge_and_others_do_not():
    last_frame = 551 * HOP_S  # a box reaching a 5-s window's end stops at its last frame
    rec = record(
        [
            (0.0, [(1, NAME, 0.6, 3.0, last_frame), (2, "b", 0.4, 3.0, last_frame)]),
            (5.0, [(1, NAME, 0.9, 5.0, 6.0), (2, "b", 0.3, 5.5, 6.0)]),  # b: a gap of 0.5 s
            (10.0, [(1, NAME, 0.7, 12.0, 13.0)]),
        ]
    )
    sels = detections.selections(detections.rows(rec), gap_s=HOP_S)
    assert [(s.class_name, s.begin_s, s.end_s) for s in sels] == [
        (NAME, 3.0, 6.0),  # one call across the window boundary
        ("b", 3.0, last_frame),
        ("b", 5.5, 6.0),
        (NAME, 12.0, 13.0),
    ]
    merged = sels[0]
    assert merged.probability == 0.9 and (merged.low_hz, merged.high_hz) == (2001.0, 4001.0)


def test_selections_take_the_call_box_and_keep_the_evidence_box_beside_it():
    last_frame = 551 * HOP_S
    rec = record(
        [
            (0.0, [(1, NAME, 0.6, 2.0, last_frame), (2, "b", 0.4, 1.0, 2.0)]),
            (5.0, [(1, NAME, 0.9, 5.0, 7.0), (2, "b", 0.5, 6.0, 8.0)]),
        ]
    )
    calls = {  # (window, class) → call box; b's second window found no call
        (0, 1): (4.5, last_frame, 5000.0, 6000.0),
        (5.0, 1): (5.0, 5.4, 4800.0, 6200.0),
        (0, 2): (1.2, 1.5, 900.0, 1100.0),
    }
    for w in rec["windows"]:
        for c in w["explained"]:
            box = calls.get((w["start_s"], c["class_id"]), (None,) * 4)
            c.update(zip(detections.CALL, box, strict=True))
    sels = detections.selections(detections.rows(rec), gap_s=HOP_S)
    got = [(s.class_name, s.box, s.begin_s, s.end_s, s.low_hz, s.high_hz) for s in sels]
    assert got == [
        ("b", "call", 1.2, 1.5, 900.0, 1100.0),
        (NAME, "call", 4.5, 5.4, 4800.0, 6200.0),  # one call across the boundary, tight
        ("b", "evidence", 6.0, 8.0, 2002.0, 4002.0),  # no call box: the evidence box
    ]
    assert sels[1].evidence == (2.0, 7.0, 2001.0, 4001.0)  # both windows' evidence boxes
    table = pd.read_csv(io.StringIO(detections.raven_table(sels)), sep="\t")
    assert table["Box"].tolist() == ["call", "call", "evidence"]
    np.testing.assert_allclose(
        table.loc[1, list(detections.EVIDENCE_COLUMNS)].astype(float), [2.0, 7.0, 2001.0, 4001.0]
    )
    assert table.loc[1, "Begin Time (s)"] == 4.5 and table.loc[1, "High Freq (Hz)"] == 6200.0
    # a call box beside an evidence box of the next window merges into an evidence selection
    mixed = detections.selections(
        [*detections.rows(rec)][:1]
        + [{**[*detections.rows(rec)][2], **dict.fromkeys(detections.CALL)}],
        gap_s=HOP_S,
    )
    assert [(s.box, s.begin_s, s.end_s) for s in mixed] == [("evidence", 4.5, 7.0)]


SELS = [Selection(NAME, 0.5, 2.25, 1500.0, 4200.5, 0.875), Selection("b\tc", 3, 4, 10, 20, 0.5)]


def test_raven_table_parses_with_pandas_under_ravens_column_names():
    table = pd.read_csv(io.StringIO(detections.raven_table(SELS)), sep="\t")
    assert tuple(table.columns) == RAVEN_COLUMNS
    assert table["Selection"].tolist() == [1, 2]
    assert table["View"].tolist() == ["Spectrogram 1"] * 2 and table["Channel"].tolist() == [1, 1]
    assert table.loc[0, "Species"] == NAME and table.loc[1, "Species"] == "b\tc"  # quoted
    np.testing.assert_allclose(
        table.loc[0, ["Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)"]].astype(
            float
        ),
        [0.5, 2.25, 1500.0, 4200.5],
    )


def test_audacity_labels_have_a_spectral_line_after_each_label():
    lines = detections.audacity_labels(SELS).splitlines()
    assert len(lines) == 4
    start, end, text = lines[0].split("\t")
    assert (float(start), float(end)) == (0.5, 2.25) and text == f"{NAME} (0.88)"
    marker, low, high = lines[1].split("\t")
    assert marker == "\\" and (float(low), float(high)) == (1500.0, 4200.5)
    assert lines[2].split("\t")[2] == "b c (0.50)"  # a tab in a name cannot split the line


# Three classes, all explained: each window has one above a third and one below it.
MIN_P = 0.3334


@pytest.fixture(scope="module")
@marks("slow")
def run(tmp_path_factory, species_checkpoint):
    out = tmp_path_factory.mktemp("det")
    proc = subprocess.run(
        [sys.executable, "-m", "echocam_cli", "run", str(ROOT / "samples"), "--out", str(out),
         "--weights", str(species_checkpoint), "--top-k", "3", "--min-probability", str(MIN_P),
         "--threads", "2"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def test_run_writes_detection_tables_equal_to_the_records(run):
    records = [json.loads(p.read_text()) for p in sorted(run.rglob("record.json"))]
    assert records and all(r["status"] == "ok" for r in records)
    everything = [d for r in records for d in detections.rows(r)]
    want = [d for d in everything if d["probability"] >= MIN_P]
    assert 0 < len(want) < len(everything)  # the filter left some out; records keep all
    table = pq.read_table(run / "detections.parquet")
    assert table.schema == detections.SCHEMA
    key = ["source_key", "begin_s", "class_id"]
    got = table.to_pandas().sort_values(key).reset_index(drop=True)
    expected = pd.DataFrame(want, columns=detections.SCHEMA.names).sort_values(key)
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True))
    csv = pd.read_csv(run / "detections.csv").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(csv, got, check_dtype=False)
    # duckdb reads the typed columns without casts
    top = duckdb.sql(
        f"select class_name, count(*) n, max(probability) p from '{run / 'detections.parquet'}' "
        "where box_high_hz > box_low_hz group by class_name order by n desc"
    ).fetchall()
    assert sum(n for _, n, _ in top) == len(want)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["detections"] == len(want) and summary["min_probability"] == MIN_P


def test_record_npz_and_per_recording_files_agree(run):
    for path in sorted(run.rglob("record.json")):
        rec = json.loads(path.read_text())
        with np.load(run / rec["outputs"]["cam"]) as npz:
            for name in detections.EVIDENCE:
                from_record = [[c[name] for c in w["explained"]] for w in rec["windows"]]
                from_record = np.array(from_record, dtype=float)  # None (no call) → NaN
                np.testing.assert_allclose(npz[name], from_record, atol=1e-6)
            starts = npz["window_starts_s"][:, None]
            assert np.all(npz["box_begin_s"] >= starts - 1e-9)
            assert np.all(npz["box_end_s"] <= starts + 5.0)
            assert np.all(npz["box_begin_s"] <= npz["peak_time_s"])
            assert np.all(npz["peak_time_s"] <= npz["box_end_s"])
            # the peak lies in its box, which stops at the Nyquist frequency: a CAM that peaks
            # in the empty bands above it (fmax 13 kHz at 22,050 Hz) keeps that peak
            top_hz = Params().sample_rate / 2
            assert np.all(np.minimum(npz["box_low_hz"], top_hz) <= npz["peak_freq_hz"])
            above = npz["peak_freq_hz"] > top_hz
            assert np.all((npz["peak_freq_hz"] <= npz["box_high_hz"]) | above)
            assert np.all(npz["box_high_hz"] <= top_hz)
            # the call box overlaps the evidence box and reaches at most a call's gap beyond it
            # in time (its sounds are taken whole), plus half a frame
            found = ~np.isnan(npz["call_begin_s"])
            reach = CALL_GAP_S + Params().hop_length / Params().sample_rate / 2 + 1e-6
            assert np.all(npz["call_begin_s"][found] >= npz["box_begin_s"][found] - reach)
            assert np.all(npz["call_end_s"][found] <= npz["box_end_s"][found] + reach)
            assert np.all(npz["call_begin_s"][found] <= npz["box_end_s"][found])
            assert np.all(npz["call_end_s"][found] >= npz["box_begin_s"][found])
            assert np.all(npz["call_high_hz"][found] <= top_hz)
            assert np.all(npz["call_begin_s"][found] < npz["call_end_s"][found])
            assert np.all(npz["call_low_hz"][found] < npz["call_high_hz"][found])
            assert np.all(npz["call_low_hz"][found] <= npz["box_high_hz"][found])
            assert np.all(npz["call_high_hz"][found] >= npz["box_low_hz"][found])
        raven = pd.read_csv(run / rec["outputs"]["selections"], sep="\t")
        kept = [d for d in detections.rows(rec) if d["probability"] >= MIN_P]
        assert set(raven["Species"]) == {d["class_name"] for d in kept}
        assert len(raven) <= len(kept)  # touching boxes merged
        labels = (run / rec["outputs"]["labels"]).read_text().splitlines()
        assert len(labels) == 2 * len(raven)
