"""One decision per detection from everyone's standing verdicts, and what it says of the model.

Each reviewer's standing verdict (``Reviews.standing()``: latest per reviewer and detection,
undone ones gone) may disagree with another reviewer's.  The rule here, used by export, summary
and thresholds alike: **among the judged verdicts (yes, no) on a detection, the one given last
wins** (``at``; ties by ``received_at``, then by reviewer name).  Skips decide nothing: a skip
never hides another reviewer's yes or no.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from echocam.bucket.reviews import JUDGED


def decided(verdicts: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per detection id, the verdict that decides it (see the module's rule)."""
    out: dict[str, dict[str, Any]] = {}
    for v in verdicts:
        if v["verdict"] not in JUDGED:
            continue
        old = out.get(v["id"])
        if old is None or _order(v) > _order(old):
            out[v["id"]] = v
    return out


def _order(v: dict[str, Any]) -> tuple[str, str, str]:
    return (v["at"] or "", v.get("received_at") or "", v["reviewer"] or "")


def outcome(v: dict[str, Any]) -> str:
    """``yes`` (the model's class is there), ``corrected`` (another class is: a yes with a
    ``label`` other than the class), ``no``, or ``skip``."""
    if v["verdict"] == "yes" and v.get("label") not in (None, v["class_name"]):
        return "corrected"
    return v["verdict"]


def correct(v: dict[str, Any]) -> bool:
    """Whether the model was right: a yes without another class."""
    return outcome(v) == "yes"
