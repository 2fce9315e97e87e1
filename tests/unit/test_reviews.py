"""Verdicts under ``_reviews/``: one object per batch, merged on read, latest per reviewer wins."""

from __future__ import annotations

import json

import pytest

from echocam.bucket import reviews
from echocam.bucket.storage import LocalStore
from echocam.errors import InvalidParams

RUN = {"run_id": "r1", "model": {"sha256": "ab" * 32}}


def row(key="a/x.wav", t=0.0, name="Wren", p=0.9):
    return {
        "source_key": key,
        "begin_s": t,
        "end_s": t + 5.0,
        "class_name": name,
        "probability": p,
        "box_begin_s": t + 1,
        "box_end_s": t + 2,
        "box_low_hz": 2000.0,
        "box_high_hz": 4000.0,
        "call_begin_s": None,
        "call_end_s": None,
        "call_low_hz": None,
        "call_high_hz": None,
    }


def v(verdict, at, *, reviewer="ann", **kw):
    return reviews.verdict(row(**kw), verdict=verdict, reviewer=reviewer, run=RUN, at=at)


def test_batches_are_new_objects_and_merge_latest_per_reviewer(tmp_path):
    store = LocalStore(str(tmp_path))
    r = reviews.Reviews.load(store)
    r.write([v("yes", "2026-01-01T00:00:01Z"), v("no", "2026-01-01T00:00:02Z", t=5.0)])
    r.write([v("no", "2026-01-01T00:00:03Z")])  # ann changes her mind on the first
    r.write([v("yes", "2026-01-01T00:00:04Z", reviewer="bob")])
    keys = sorted(store.keys(under=reviews.PREFIX))
    assert len(keys) == 3 and all(k.endswith(".jsonl") for k in keys)
    lines = [json.loads(x) for x in (tmp_path / keys[0]).read_text().splitlines()]
    assert list(lines[0]) == list(reviews.FIELDS) and lines[0]["run_id"] == "r1"
    assert lines[0]["box"] == [1.0, 2.0, 2000.0, 4000.0] and lines[0]["call"] is None

    fresh = reviews.Reviews.load(store)  # another reader: the same merge
    for got in (r, fresh):
        ann = {x["id"]: x["verdict"] for x in got.standing(reviewer="ann")}
        assert ann == {"a/x.wav@0.0#Wren": "no", "a/x.wav@5.0#Wren": "no"}
        assert [x["verdict"] for x in got.standing(reviewer="bob")] == ["yes"]


def test_undo_withdraws_and_order_is_the_reviewers_not_the_listing(tmp_path):
    store = LocalStore(str(tmp_path))
    r = reviews.Reviews(store)
    # written in the opposite order of when they were given: the time decides
    r.write([v("undo", "2026-01-01T00:00:09Z")])
    r.write([v("yes", "2026-01-01T00:00:08Z")])
    assert r.seen("ann") == set()
    r.write([v("skip", "2026-01-01T00:00:10Z")])
    assert r.seen("ann") == {"a/x.wav@0.0#Wren"}
    assert reviews.Reviews.load(store).seen("ann") == {"a/x.wav@0.0#Wren"}


def test_refresh_reads_only_new_objects(tmp_path):
    store = LocalStore(str(tmp_path))
    a, b = reviews.Reviews.load(store), reviews.Reviews.load(store)
    a.write([v("yes", "2026-01-01T00:00:01Z")])
    assert b.refresh() == 1 and b.refresh() == 0
    assert b.seen("ann") == {"a/x.wav@0.0#Wren"}


@pytest.mark.parametrize(
    "kw",
    [
        {"reviewer": "../x"},
        {"reviewer": ""},
        {"reviewer": "a" * 65},
        {"reviewer": "ann\n"},
        {"verdict": "maybe"},
        {"label": "../../etc"},
        {"label": "Wren\x00"},
        {"label": " Wren"},
        {"label": "Wren", "verdict": "no"},
        {"at": "yesterday"},
        {"at": "2026-01-01T00:00:00"},  # no zone
    ],
)
def test_bad_fields_are_refused(kw):
    args = {"verdict": "yes", "reviewer": "ann", "run": RUN, "label": None, "at": None} | kw
    with pytest.raises(InvalidParams):
        reviews.verdict(row(), **args)


def test_a_new_class_name_and_reviewer_names_that_pass():
    got = reviews.verdict(
        row(), verdict="yes", reviewer="ann.smith@lab-1", run=RUN, label="Grey Shrike-thrush (juv.)"
    )
    assert got["label"] == "Grey Shrike-thrush (juv.)" and got["reviewer"] == "ann.smith@lab-1"
