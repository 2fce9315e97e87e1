"""Verdicts as the labels CSV ``echocam train INPUT --labels labels.csv`` reads as it is.

One row per decided detection (``echocam.review.verdicts.decided``: across reviewers the last
yes or no wins; skips give nothing):

- ``yes``: the class, or the corrected class (``label``), over the call box (time and band),
  or the evidence box where the detection has no call box;
- ``no``: the negative label (``Background`` by default) over the same time span, band empty
  (the class is not there; what is, is not known);
- a detection with neither box: the window (``begin_s``..``end_s``), band empty;
- a ``no`` row whose span overlaps a yes row of the same recording is left out: a window that
  holds one class's call is no example of "no call here" (training would be told both).

Keys are the detections' source keys: relative to the run's input, as train's SOURCE wants.
Identical rows (overlapping windows that found the same call) are written once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

from echocam.bucket.reviews import check_class_name
from echocam.review.verdicts import decided

COLUMNS = ("key", "label", "start_s", "end_s", "low_hz", "high_hz")
NEGATIVE_LABEL = "Background"


def label_row(v: Mapping[str, Any], *, negative_label: str = NEGATIVE_LABEL) -> dict[str, Any]:
    """The labels-CSV row of one judged verdict (yes or no); times s, band Hz (None: empty)."""
    box = v.get("call") or v.get("box")
    start, end = (box[0], box[1]) if box else (v["begin_s"], v["end_s"])
    start = max(0.0, float(start))
    band = (box[2], box[3]) if box and v["verdict"] == "yes" else (None, None)
    label = (v.get("label") or v["class_name"]) if v["verdict"] == "yes" else negative_label
    return {
        "key": v["source_key"],
        "label": label,
        "start_s": round(start, 6),
        "end_s": round(float(end), 6),
        "low_hz": None if band[0] is None else round(float(band[0]), 3),
        "high_hz": None if band[1] is None else round(float(band[1]), 3),
    }


def label_rows(
    verdicts: Iterable[Mapping[str, Any]], *, negative_label: str = NEGATIVE_LABEL
) -> list[dict[str, Any]]:
    """Labels-CSV rows of everyone's standing verdicts, decided, deduplicated, sorted by key and
    start; rows whose span is empty are left out."""
    check_class_name(negative_label)
    rows = {}
    for v in decided(verdicts).values():
        r = label_row(v, negative_label=negative_label)
        if r["end_s"] > r["start_s"]:
            rows[tuple(r.values())] = (r, v["verdict"])
    positives: dict[str, list[tuple[float, float]]] = {}
    for r, verdict in rows.values():
        if verdict == "yes":
            positives.setdefault(r["key"], []).append((r["start_s"], r["end_s"]))
    kept = [
        r
        for r, verdict in rows.values()
        if verdict == "yes"
        or not any(a < r["end_s"] and r["start_s"] < b for a, b in positives.get(r["key"], ()))
    ]
    return sorted(kept, key=lambda r: (r["key"], r["start_s"], r["label"], r["end_s"]))


def labels_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The CSV text: header ``key,label,start_s,end_s,low_hz,high_hz``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r[c] is None else r[c] for c in COLUMNS])
    return buf.getvalue()
