"""Detections: every window's explained classes with where their evidence is, as tables.

A *detection* is one window × explained class of an ok record, with its probability, logit,
the CAM's peak and evidence box (seconds from the recording's start, Hz).  A *selection*
merges the detections of one class whose boxes touch across consecutive or overlapping windows,
as a person would draw one selection around one call.  The writers are pure: rows in, text out.
No torch here (the manifest step writes the run-level tables).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

#: Columns of detections.parquet / detections.csv, in order.
SCHEMA = pa.schema(
    [
        ("source_key", pa.string()),
        ("begin_s", pa.float64()),  # the window
        ("end_s", pa.float64()),
        ("class_name", pa.string()),
        ("class_id", pa.int64()),
        ("probability", pa.float64()),
        ("logit", pa.float64()),
        ("peak_time_s", pa.float64()),
        ("peak_freq_hz", pa.float64()),
        ("box_begin_s", pa.float64()),
        ("box_end_s", pa.float64()),
        ("box_low_hz", pa.float64()),
        ("box_high_hz", pa.float64()),
        ("call_begin_s", pa.float64()),  # the call box: null where no call was found
        ("call_end_s", pa.float64()),
        ("call_low_hz", pa.float64()),
        ("call_high_hz", pa.float64()),
        ("record_key", pa.string()),
    ]
)
BOX = ("box_begin_s", "box_end_s", "box_low_hz", "box_high_hz")
CALL = ("call_begin_s", "call_end_s", "call_low_hz", "call_high_hz")
EVIDENCE = ("peak_time_s", "peak_freq_hz", *BOX, *CALL)

RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Species",
    "Probability",
)


def rows(record: dict[str, Any], *, min_probability: float = 0.0) -> Iterator[dict[str, Any]]:
    """The detections of an ok ``record`` (none for a failed one), typed as :data:`SCHEMA`."""
    if record.get("status") != "ok":
        return
    length = record["window_seconds"]
    for window in record["windows"]:
        for c in window["explained"]:
            if c["probability"] < min_probability:
                continue
            yield {
                "source_key": record["source_key"],
                "begin_s": window["start_s"],
                "end_s": round(window["start_s"] + length, 6),
                "class_name": c["class_name"],
                "class_id": c["class_id"],
                "probability": c["probability"],
                "logit": c["logit"],
                **{name: c.get(name) for name in EVIDENCE},  # records before the call box: None
                "record_key": record["record_key"],
            }


@dataclass
class Selection:
    """One class's evidence over one or more windows whose boxes touch."""

    class_name: str
    begin_s: float
    end_s: float
    low_hz: float
    high_hz: float
    probability: float  # the highest of the merged detections


def selections(detections: Iterable[dict[str, Any]], *, gap_s: float) -> list[Selection]:
    """Merge each class's boxes that overlap or lie within ``gap_s`` in time, in time order.

    ``gap_s`` is one STFT hop: boxes of neighbouring windows that both reach the boundary are
    one frame apart.  Boxes merge by time alone; the merged box spans both frequency ranges.
    """
    by_class: dict[str, list[dict[str, Any]]] = {}
    for d in detections:
        by_class.setdefault(d["class_name"], []).append(d)
    out: list[Selection] = []
    for name, ds in by_class.items():
        current: Selection | None = None
        for d in sorted(ds, key=lambda d: (d["box_begin_s"], d["box_end_s"])):
            if current is not None and d["box_begin_s"] <= current.end_s + gap_s + 1e-9:
                current.end_s = max(current.end_s, d["box_end_s"])
                current.low_hz = min(current.low_hz, d["box_low_hz"])
                current.high_hz = max(current.high_hz, d["box_high_hz"])
                current.probability = max(current.probability, d["probability"])
                continue
            current = Selection(
                name,
                d["box_begin_s"],
                d["box_end_s"],
                d["box_low_hz"],
                d["box_high_hz"],
                d["probability"],
            )
            out.append(current)
    return sorted(out, key=lambda s: (s.begin_s, s.class_name))


def raven_table(sels: Iterable[Selection]) -> str:
    """A Raven Pro selection table (tab-separated, Raven's column names, one row a selection)."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(RAVEN_COLUMNS)
    for i, s in enumerate(sels, start=1):
        w.writerow(
            [i, "Spectrogram 1", 1, _num(s.begin_s), _num(s.end_s), _num(s.low_hz),
             _num(s.high_hz), s.class_name, _num(s.probability)]
        )  # fmt: skip
    return buf.getvalue()


def audacity_labels(sels: Iterable[Selection]) -> str:
    """An Audacity label track with spectral selections.

    Each label is ``start<TAB>end<TAB>text``, followed by ``\\<TAB>low_hz<TAB>high_hz``: the
    format of Audacity's "Import Labels" (its manual, "Importing and Exporting Labels").
    """
    lines = []
    for s in sels:
        text = f"{s.class_name} ({s.probability:.2f})".replace("\t", " ").replace("\n", " ")
        lines.append(f"{_num(s.begin_s)}\t{_num(s.end_s)}\t{text}")
        lines.append(f"\\\t{_num(s.low_hz)}\t{_num(s.high_hz)}")
    return "".join(line + "\n" for line in lines)


def _num(x: float) -> str:
    return f"{x:.6f}"
