"""Per class: what was reviewed, what it said, and the model's precision.

``precision`` is on the reviewed detections as they are: right / (yes + corrected + no), where
right is a plain yes.  A stratified sample (equal numbers per probability bin) over-represents
the rare low-probability detections, so ``weighted_precision`` weights it back to the run's
table: the class's probability range, from its lowest detection to 1, is cut into ``bins``
equal bins; each bin's reviewed precision counts as many times as the table has detections of
the class in that bin.  Bins with detections but no reviewed ones cannot be estimated: they are
left out, and ``coverage`` is the share of the class's detections in the bins that count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from echocam.review.verdicts import decided, outcome

BINS = 10


def bin_edges(*, low: float, bins: int = BINS) -> list[float]:
    """``bins`` + 1 edges from ``low`` to 1 (probabilities)."""
    low = min(max(0.0, low), 1.0)
    return [low + (1.0 - low) * i / bins for i in range(bins + 1)]


def bin_of(p: float, edges: Sequence[float]) -> int:
    """The bin of probability ``p`` (the last bin holds 1; below the first edge: bin 0)."""
    for i in range(len(edges) - 2, -1, -1):
        if p >= edges[i]:
            return i
    return 0


def weighted_precision(
    *, reviewed: Sequence[tuple[float, bool]], table: Sequence[float], bins: int = BINS
) -> tuple[float | None, float]:
    """(precision weighted to ``table``, coverage) from ``reviewed`` (probability, right) pairs
    and the probabilities of all the class's detections; (None, 0) where nothing overlaps."""
    if not reviewed or not table:
        return None, 0.0
    edges = bin_edges(low=min(min(table), min(p for p, _ in reviewed)), bins=bins)
    right, seen = [0] * bins, [0] * bins
    for p, ok in reviewed:
        b = bin_of(p, edges)
        seen[b] += 1
        right[b] += int(ok)
    count = [0] * bins
    for p in table:
        count[bin_of(p, edges)] += 1
    covered = sum(count[b] for b in range(bins) if seen[b])
    if not covered:
        return None, 0.0
    est = sum(count[b] * right[b] / seen[b] for b in range(bins) if seen[b]) / covered
    return est, covered / len(table)


def summarise(
    verdicts: Iterable[Mapping[str, Any]],
    *,
    table: Mapping[str, Sequence[float]] | None = None,
    bins: int = BINS,
) -> dict[str, dict[str, Any]]:
    """Per class (sorted): ``detections`` (in the table), ``reviewed`` (decided yes or no),
    ``yes``, ``corrected``, ``no``, ``skipped`` (detections only skipped), ``precision`` and,
    with ``table``, ``weighted_precision`` and ``coverage``; precisions in [0, 1] or None."""
    standing = list(verdicts)
    final = decided(standing)
    skipped: dict[str, set[str]] = {}
    for v in standing:
        if v["verdict"] == "skip" and v["id"] not in final:
            skipped.setdefault(v["class_name"], set()).add(v["id"])
    names = {v["class_name"] for v in final.values()} | set(skipped) | set(table or {})
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        mine = [v for v in final.values() if v["class_name"] == name]
        counts = {k: sum(outcome(v) == k for v in mine) for k in ("yes", "corrected", "no")}
        row: dict[str, Any] = {
            "detections": None if table is None else len(table.get(name, [])),
            "reviewed": len(mine),
            **counts,
            "skipped": len(skipped.get(name, ())),
            "precision": counts["yes"] / len(mine) if mine else None,
        }
        if table is not None:
            pairs = [
                (float(v["probability"]), outcome(v) == "yes")
                for v in mine
                if v.get("probability") is not None
            ]
            est, coverage = weighted_precision(reviewed=pairs, table=table.get(name, []), bins=bins)
            row["weighted_precision"], row["coverage"] = est, coverage
        out[name] = row
    return out


def summary_text(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """The summary as an aligned table."""
    head = ("class", "detections", "reviewed", "yes", "corrected", "no", "skipped", "precision",
            "weighted", "coverage")  # fmt: skip
    rows = [head]
    for name, r in summary.items():
        rows.append(
            (name, _n(r["detections"]), _n(r["reviewed"]), _n(r["yes"]), _n(r["corrected"]),
             _n(r["no"]), _n(r["skipped"]), _f(r["precision"]), _f(r.get("weighted_precision")),
             _f(r.get("coverage")))
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _n(x: int | None) -> str:
    return "-" if x is None else str(x)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
