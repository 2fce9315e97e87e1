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
from collections.abc import Iterable, Iterator, Mapping
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

#: The evidence box of a selection, in the columns after Raven's own.
EVIDENCE_COLUMNS = (
    "Evidence Begin Time (s)",
    "Evidence End Time (s)",
    "Evidence Low Freq (Hz)",
    "Evidence High Freq (Hz)",
)
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
    "Box",  # which box the time and frequency columns hold: "call" or "evidence"
    *EVIDENCE_COLUMNS,
)


def detection_id(source_key: str, begin_s: float, class_name: str) -> str:
    """A detection's id: ``KEY@WINDOW_START#CLASS`` (a detections-table row's source key,
    begin_s and class_name)."""
    return f"{source_key}@{round(float(begin_s), 6)!r}#{class_name}"


def rows(
    record: dict[str, Any],
    *,
    min_probability: float = 0.0,
    class_min_probability: Mapping[str, float] | None = None,
) -> Iterator[dict[str, Any]]:
    """The detections of an ok ``record`` (none for a failed one), typed as :data:`SCHEMA`;
    those below ``min_probability`` (their class's in ``class_min_probability``) left out."""
    if record.get("status") != "ok":
        return
    length = record["window_seconds"]
    per_class = class_min_probability or {}
    for window in record["windows"]:
        for c in window["explained"]:
            if c["probability"] < per_class.get(c["class_name"], min_probability):
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
    """One class's boxes over one or more windows, merged where they touch.

    The box (``begin_s`` … ``high_hz``) is the call box where every merged detection has one
    (``box`` "call"), else the call and evidence boxes together (``box`` "evidence"); the
    evidence box spans the merged detections' evidence boxes.
    """

    class_name: str
    begin_s: float
    end_s: float
    low_hz: float
    high_hz: float
    probability: float  # the highest of the merged detections
    box: str = "evidence"
    evidence: tuple[float, float, float, float] | None = None  # begin, end s, low, high Hz

    def __post_init__(self) -> None:
        if self.evidence is None:
            self.evidence = (self.begin_s, self.end_s, self.low_hz, self.high_hz)

    def merge(self, other: Selection) -> None:
        """Take ``other`` (a touching selection of the same class) into this one."""
        self.begin_s, self.end_s = min(self.begin_s, other.begin_s), max(self.end_s, other.end_s)
        self.low_hz, self.high_hz = min(self.low_hz, other.low_hz), max(self.high_hz, other.high_hz)
        self.probability = max(self.probability, other.probability)
        self.box = "call" if self.box == other.box == "call" else "evidence"
        (b0, e0, l0, h0), (b1, e1, l1, h1) = self.evidence, other.evidence
        self.evidence = (min(b0, b1), max(e0, e1), min(l0, l1), max(h0, h1))

    @classmethod
    def of(cls, detection: dict[str, Any]) -> Selection:
        """One detection's selection: its call box where it has one, else its evidence box."""
        found = detection.get("call_begin_s") is not None
        return cls(
            detection["class_name"],
            *(float(detection[name]) for name in (CALL if found else BOX)),
            detection["probability"],
            box="call" if found else "evidence",
            evidence=tuple(float(detection[name]) for name in BOX),
        )


def selections(detections: Iterable[dict[str, Any]], *, gap_s: float) -> list[Selection]:
    """Merge each class's boxes that overlap or lie within ``gap_s`` in time, in time order.

    Each detection's box is its call box where it has one (the tight box a Raven user draws),
    else its evidence box.  ``gap_s`` is one STFT hop: boxes of neighbouring windows that both
    reach the boundary are one frame apart.  Boxes merge by time alone; the merged box spans
    both frequency ranges.
    """
    by_class: dict[str, list[Selection]] = {}
    for d in detections:
        by_class.setdefault(d["class_name"], []).append(Selection.of(d))
    out: list[Selection] = []
    for sels in by_class.values():
        current: Selection | None = None
        for s in sorted(sels, key=lambda s: (s.begin_s, s.end_s)):
            if current is not None and s.begin_s <= current.end_s + gap_s + 1e-9:
                current.merge(s)
            else:
                current = s
                out.append(current)
    return sorted(out, key=lambda s: (s.begin_s, s.class_name))


def raven_table(sels: Iterable[Selection]) -> str:
    """A Raven Pro selection table (tab-separated, Raven's column names, one row a selection;
    Raven keeps the columns after its own as annotations)."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(RAVEN_COLUMNS)
    for i, s in enumerate(sels, start=1):
        w.writerow(
            [i, "Spectrogram 1", 1, _num(s.begin_s), _num(s.end_s), _num(s.low_hz),
             _num(s.high_hz), s.class_name, _num(s.probability), s.box,
             *(_num(x) for x in s.evidence)]
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
