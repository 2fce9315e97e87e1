"""The review loop's core: export rules, the thresholds fit and files, summary weighting, and a
Raven selection table edited and imported back (real files, the CLI as users run it)."""

from __future__ import annotations

import csv
import io
import json
import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echocam.bucket import detections, reviews
from echocam.bucket.keys import output_key
from echocam.bucket.manifest import DETECTIONS_PARQUET
from echocam.bucket.storage import LocalStore
from echocam.errors import InvalidParams
from echocam.review import export, summary, thresholds
from echocam.review.verdicts import decided
from echocam.train.labels import read_labels
from echocam_cli import main

RUN = {"run_id": "r1", "model": {"sha256": "ab" * 32}, "input": "/data/in"}


def det(key="a/x.wav", t=0.0, name="Wren", p=0.9, *, call=True):
    """A detections-table row: window t..t+5, evidence box t+1..t+3, call box t+1.5..t+2.5."""
    return {
        "source_key": key, "begin_s": t, "end_s": t + 5.0, "class_name": name, "class_id": 0,
        "probability": p, "logit": math.log(p / (1 - p)), "peak_time_s": t + 2,
        "peak_freq_hz": 3000.0, "box_begin_s": t + 1, "box_end_s": t + 3,
        "box_low_hz": 2000.0, "box_high_hz": 5000.0,
        "call_begin_s": t + 1.5 if call else None, "call_end_s": t + 2.5 if call else None,
        "call_low_hz": 2500.0 if call else None, "call_high_hz": 4000.0 if call else None,
        "record_key": output_key(key, "record.json"),
    }  # fmt: skip


def verdict(row, said, at, *, reviewer="ann", label=None):
    return reviews.verdict(row, verdict=said, reviewer=reviewer, run=RUN, label=label, at=at)


def make_run(tmp_path, rows):
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    table = pa.Table.from_pylist(rows, schema=detections.SCHEMA)
    pq.write_table(table, tmp_path / DETECTIONS_PARQUET)
    return LocalStore(str(tmp_path))


# -- export ------------------------------------------------------------------------------------


def test_export_rows_follow_the_rules_and_train_reads_them():
    a, b, c, d = det(t=0.0), det(t=5.0, call=False), det(t=10.0, name="Robin"), det(t=15.0)
    standing = [
        verdict(a, "yes", "2026-01-01T00:00:01Z"),  # call box, band
        verdict(b, "yes", "2026-01-01T00:00:01Z"),  # no call box: the evidence box
        verdict(c, "no", "2026-01-01T00:00:01Z"),  # Background, no band
        verdict(d, "yes", "2026-01-01T00:00:01Z", label="Song Thrush"),  # corrected
        verdict(det(t=20.0), "skip", "2026-01-01T00:00:01Z"),  # nothing
    ]
    rows = export.label_rows(standing)
    text = export.labels_csv(rows)
    got = [r for r in csv.DictReader(io.StringIO(text))]
    assert [(r["label"], r["start_s"], r["end_s"], r["low_hz"], r["high_hz"]) for r in got] == [
        ("Wren", "1.5", "2.5", "2500.0", "4000.0"),
        ("Wren", "6.0", "8.0", "2000.0", "5000.0"),
        ("Background", "11.5", "12.5", "", ""),
        ("Song Thrush", "16.5", "17.5", "2500.0", "4000.0"),
    ]
    labelled = read_labels(text, source="/data/in")  # train reads it as it is
    assert labelled.class_names == ["Background", "Song Thrush", "Wren"]
    assert [e.box(top_hz=11025.0) for e in labelled.examples][2] == (11.5, 12.5, 0.0, 11025.0)
    assert {e.key for e in labelled.examples} == {"a/x.wav"}
    other = export.label_rows(standing, negative_label="Noise")
    assert [r["label"] for r in other][2] == "Noise"
    with pytest.raises(InvalidParams):
        export.label_rows(standing, negative_label="../x")


def test_reviewers_disagreeing_the_last_judged_verdict_wins_and_skips_decide_nothing():
    a = det()
    standing = [
        verdict(a, "yes", "2026-01-01T00:00:01Z", reviewer="ann"),
        verdict(a, "no", "2026-01-01T00:00:05Z", reviewer="bob"),  # latest judged: wins
        verdict(a, "skip", "2026-01-01T00:00:09Z", reviewer="cy"),  # later, but a skip
    ]
    (only,) = decided(standing).values()
    assert only["reviewer"] == "bob" and only["verdict"] == "no"
    assert [r["label"] for r in export.label_rows(standing)] == ["Background"]
    standing.append(verdict(a, "yes", "2026-01-01T00:00:07Z", reviewer="ann"))  # ann again
    assert [r["label"] for r in export.label_rows(standing)] == ["Wren"]


def test_overlapping_windows_that_found_one_call_give_one_row():
    a, b = det(t=0.0), det(t=0.0)
    b["begin_s"], b["end_s"] = -0.0, 5.0  # the same detection, another id spelling
    c = dict(det(t=2.5), call_begin_s=1.5, call_end_s=2.5)  # a hop later, the same call
    standing = [verdict(x, "yes", "2026-01-01T00:00:01Z") for x in (a, c)]
    assert len(export.label_rows(standing)) == 1


def test_a_no_over_another_class_s_yes_is_no_background_example():
    wren, robin = det(t=0.0), det(t=0.0, name="Robin")  # one window: a Wren call, not a Robin
    later = det(t=20.0, name="Robin")  # a Robin detection with no call under it
    standing = [
        verdict(wren, "yes", "2026-01-01T00:00:01Z"),
        verdict(robin, "no", "2026-01-01T00:00:02Z"),
        verdict(later, "no", "2026-01-01T00:00:03Z"),
    ]
    rows = export.label_rows(standing)
    assert [(r["label"], r["start_s"]) for r in rows] == [("Wren", 1.5), ("Background", 21.5)]


# -- thresholds --------------------------------------------------------------------------------


def synthetic(n, *, center=0.6, slope=10.0, seed=0):
    """(probabilities, outcomes) with P(yes | p) = sigmoid(slope (p - center)), p uniform."""
    rng = random.Random(seed)
    ps = [rng.random() for _ in range(n)]
    ys = [int(rng.random() < thresholds.sigmoid(slope * (p - center))) for p in ps]
    return ps, ys


def test_fit_recovers_a_known_curve_and_the_threshold_for_a_precision():
    ps, ys = synthetic(4000)
    a, b = thresholds.fit_logistic(probabilities=ps, outcomes=ys)
    assert b == pytest.approx(10.0, rel=0.15) and -a / b == pytest.approx(0.6, abs=0.02)
    entry = thresholds.class_thresholds(probabilities=ps, outcomes=ys, table=ps)
    truth = 0.6 + math.log(0.95 / 0.05) / 10  # 0.894
    assert entry["thresholds"]["0.95"] == pytest.approx(truth, abs=0.03)
    assert entry["thresholds"]["0.90"] == pytest.approx(0.6 + math.log(9) / 10, abs=0.03)
    assert entry["thresholds"]["0.99"] is None  # 1.06: above any probability
    assert "above the highest reviewed" in entry["notes"]["0.99"]
    s = entry["support"]["0.95"]
    assert s["reviewed"] > 300 and s["detections"] == s["reviewed"]  # floor cleared with margin
    assert 0.95 < s["expected_precision"] < 1.0  # above t, every curve value is >= 0.95


@pytest.mark.parametrize(
    ("ps", "ys", "why"),
    [
        ([0.5] * 9, [1, 0] * 4 + [1], "too few verdicts: 9"),
        ([0.1 * i for i in range(10)], [1] * 10, "no verdict says no"),
        ([0.1 * i for i in range(10)], [0] * 10, "no verdict says yes"),
        ([0.1 * i for i in range(10)], [1] * 5 + [0] * 5, "does not rise"),  # falls
    ],
)
def test_too_few_or_one_sided_verdicts_give_null_with_a_reason(ps, ys, why):
    entry = thresholds.class_thresholds(probabilities=ps, outcomes=ys)
    assert entry["thresholds"] == {"0.90": None, "0.95": None, "0.99": None}
    assert all(why in note for note in entry["notes"].values())


def test_a_threshold_with_few_reviewed_items_above_it_is_null():
    ps = [i / 20 for i in range(20)]  # 0 .. 0.95, right only at the top
    ys = [0] * 16 + [1] * 4
    entry = thresholds.class_thresholds(probabilities=ps, outcomes=ys)
    assert entry["thresholds"] == {"0.90": None, "0.95": None, "0.99": None}
    assert all("only" in n and "reviewed detections" in n for n in entry["notes"].values())


def test_thresholds_file_and_loading_it():
    ps, ys = synthetic(400, seed=1)
    standing = []
    for i, (p, y) in enumerate(zip(ps, ys, strict=True)):
        row = det(t=5.0 * i, p=min(max(p, 1e-3), 0.999))
        standing.append(verdict(row, "yes" if y else "no", "2026-01-01T00:00:01Z"))
    standing.append(verdict(det(name="Robin"), "yes", "2026-01-01T00:00:01Z"))
    doc = thresholds.thresholds_file(decided=decided(standing).values(), run=RUN)
    doc = json.loads(json.dumps(doc))  # what is written
    assert doc["format"] == thresholds.FORMAT and doc["model_sha256"] == "ab" * 32
    robin = doc["classes"]["Robin"]
    assert robin["n"] == 1 and "too few" in robin["notes"]["0.95"]
    wren = doc["classes"]["Wren"]["thresholds"]["0.95"]
    assert doc["thresholds"]["0.95"] == {"Wren": wren}
    assert thresholds.load_thresholds(json.dumps(doc)) == {"Wren": wren}
    assert thresholds.load_thresholds(doc, precision=0.9) == doc["thresholds"]["0.90"]
    with pytest.raises(InvalidParams, match="no thresholds for precision 0.80"):
        thresholds.load_thresholds(doc, precision=0.8)
    t = thresholds.load_thresholds('{"Wren": 0.7, "Robin": null}')
    assert t == {"Wren": 0.7}
    assert thresholds.threshold_for(t, "Wren") == 0.7
    assert thresholds.threshold_for(t, "Robin", floor=0.2) == 0.2
    assert thresholds.passes(t, "Wren", 0.7) and not thresholds.passes(t, "Wren", 0.69)
    for bad in ('{"Wren": 1.5}', '{"Wren": "x"}', "[1]", "{nope"):
        with pytest.raises(InvalidParams):
            thresholds.load_thresholds(bad)
    with pytest.raises(InvalidParams, match="cannot read"):
        thresholds.load_thresholds("/nonexistent/t.json")


def test_thresholds_load_without_numpy():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "from echocam.review.thresholds import load_thresholds\n"
        "print(load_thresholds('{\"Wren\": 0.5}'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{'Wren': 0.5}"


# -- summary -----------------------------------------------------------------------------------


def test_a_stratified_sample_is_weighted_back_to_the_table():
    # the table: 900 detections in the top bin (all right), 100 in the bottom bin (all wrong)
    table = [0.95] * 900 + [0.05] * 100
    standing = [verdict(det(t=5.0 * i, p=0.95), "yes", "2026-01-01T00:00:01Z") for i in range(10)]
    standing += [
        verdict(det(t=100.0 + 5.0 * i, p=0.05), "no", "2026-01-01T00:00:01Z") for i in range(10)
    ]
    standing.append(verdict(det(t=999.0, p=0.5), "skip", "2026-01-01T00:00:01Z"))
    s = summary.summarise(standing, table={"Wren": table, "Robin": [0.4]})
    wren = s["Wren"]
    assert (wren["reviewed"], wren["yes"], wren["no"], wren["skipped"]) == (20, 10, 10, 1)
    assert wren["precision"] == 0.5  # the sample's own
    assert wren["weighted_precision"] == pytest.approx(0.9) and wren["coverage"] == 1.0
    assert s["Robin"]["reviewed"] == 0 and s["Robin"]["precision"] is None
    text = summary.summary_text(s)
    assert text.splitlines()[0].split()[:3] == ["class", "detections", "reviewed"]
    assert "0.900" in text


def test_bins_without_reviews_are_left_out_and_coverage_says_so():
    est, coverage = summary.weighted_precision(
        reviewed=[(0.95, True), (0.96, False)], table=[0.95] * 3 + [0.05]
    )
    assert est == 0.5 and coverage == 0.75


# -- Raven round trip, through the CLI ---------------------------------------------------------


def test_raven_table_edited_imported_then_exported(tmp_path, capsys):
    rows = [det(t=0.0, p=0.92), det(t=5.0, p=0.85), det(t=30.0, p=0.4), det(t=40.0, name="Robin")]
    rows += [det(key="b/y.wav", t=0.0, p=0.7)]
    store = make_run(tmp_path, rows)
    mine = [r for r in rows if r["source_key"] == "a/x.wav"]
    sels = detections.selections(mine, gap_s=0.01)
    assert [s.class_name for s in sels] == ["Wren", "Wren", "Wren", "Robin"]
    table = detections.raven_table(sels).splitlines()
    # the reviewer adds a Verdict column in Raven: yes, no, a correction, and one left empty
    edited = [table[0] + "\tVerdict"]
    said = ["y", "N", "", "Song Thrush"]
    edited += [line + "\t" + x for line, x in zip(table[1:], said, strict=True)]
    path = tmp_path / output_key("a/x.wav", "selections.txt")
    path.parent.mkdir(parents=True)
    path.write_text("\r\n".join(edited) + "\r\n")  # Raven on Windows

    assert main(["review", "import", str(tmp_path), str(path), "--reviewer", "eve"]) == 0
    assert "3 verdicts" in capsys.readouterr().out
    got = {v["id"]: v for v in reviews.Reviews.load(store).standing()}
    assert {v["reviewer"] for v in got.values()} == {"eve"}
    assert {(v["begin_s"], v["class_name"], v["verdict"], v["label"]) for v in got.values()} == {
        (0.0, "Wren", "yes", None),
        (5.0, "Wren", "no", None),
        (40.0, "Robin", "yes", "Song Thrush"),
    }

    out = tmp_path / "labels.csv"
    assert main(["review", "export", str(tmp_path), "--out", str(out)]) == 0
    assert "3 labelled spans" in capsys.readouterr().out
    labelled = read_labels(out.read_text(), source=RUN["input"])
    named = [(e.key, labelled.class_names[e.label], e.start_s) for e in labelled.examples]
    assert named == [("a/x.wav", "Wren", 1.5), ("a/x.wav", "Background", 6.5),
                     ("a/x.wav", "Song Thrush", 41.5)]  # fmt: skip

    assert main(["review", "summary", str(tmp_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["classes"]["Wren"]["reviewed"] == 2 and s["classes"]["Wren"]["detections"] == 4
    assert s["classes"]["Robin"]["corrected"] == 1

    doc = tmp_path / "thresholds.json"
    assert main(["review", "thresholds", str(tmp_path), "--out", str(doc)]) == 0
    written = json.loads(doc.read_text())
    assert written["run_id"] == "r1" and written["thresholds"]["0.95"] == {}
    assert "too few" in written["classes"]["Wren"]["notes"]["0.95"]


@pytest.mark.parametrize(
    ("cell", "species", "begin", "error"),
    [
        ("maybe!", "Wren", "1.5", "line 3: Verdict 'maybe!' is not y/n/s"),
        ("y", "Robin", "1.5", "line 3: no detection of 'Robin'"),
        ("y", "Wren", "x", "line 3: Begin/End Time"),
    ],
)
def test_raven_import_errors_name_the_line(tmp_path, capsys, cell, species, begin, error):
    store = make_run(tmp_path, [det(), det(t=5.0)])
    table = tmp_path / "edited.txt"
    table.write_text(
        "Selection\tBegin Time (s)\tEnd Time (s)\tSpecies\tVerdict\n"
        "1\t6.5\t7.5\tWren\ty\n"
        f"2\t{begin}\t2.5\t{species}\t{cell}\n"
    )
    assert main(["review", "import", str(tmp_path), str(table), "--key", "a/x.wav"]) == 2
    assert error in capsys.readouterr().err
    assert list(reviews.Reviews.load(store).standing()) == []  # nothing written


def test_raven_import_needs_a_verdict_column_and_a_recording(tmp_path, capsys):
    make_run(tmp_path, [det()])
    table = tmp_path / "edited.txt"
    table.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tSpecies\n1\t1.5\t2.5\tWren\n")
    assert main(["review", "import", str(tmp_path), str(table)]) == 2
    assert "no Verdict column" in capsys.readouterr().err
    table.write_text("Begin Time (s)\tEnd Time (s)\tSpecies\tVerdict\n1.5\t2.5\tWren\ty\n")
    assert main(["review", "import", str(tmp_path), str(table)]) == 2
    assert "give --key" in capsys.readouterr().err
    table.write_text(
        "Begin Time (s)\tEnd Time (s)\tSpecies\tVerdict\tBegin File\n1.5\t2.5\tWren\ty\tx.wav\n"
    )
    assert main(["review", "import", str(tmp_path), str(table), "--reviewer", "al"]) == 0
    assert [v["reviewer"] for v in reviews.Reviews.load(LocalStore(str(tmp_path))).standing()] == [
        "al"
    ]


def test_review_commands_on_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["review", "summary", str(tmp_path)]) == 2
    assert "not a run" in capsys.readouterr().err
