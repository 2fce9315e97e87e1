"""Per-class probability thresholds from verdicts, and the thresholds files runs accept.

**The fit** (as BirdNET-Analyzer's review does): per class, a logistic regression of the
verdict (1: the model was right, a plain yes; 0: no, or a yes for another class) on the
detection's probability, ``P(right | p) = 1 / (1 + exp(-(a + b p)))``, by Newton's method
(IRLS) with a small ridge so that perfectly separated verdicts still give a finite curve.

**The threshold** for a target precision is the probability at which the fitted curve reaches
the target: ``t = (logit(target) - a) / b``, i.e. the curve value, not the precision of all the
detections above ``t`` (which is higher: every detection above ``t`` has a curve value at least
the target).  That expected precision of the detections above ``t`` is given beside it where
the run's table is at hand (the mean curve value over the class's detections with p >= t).

**No guessing.**  A class's threshold is null, with the reason in ``notes``, when:

- fewer than :data:`MIN_VERDICTS` verdicts (yes + no) stand on the class, or all of them say
  the same (no yes, or no no: the curve is not bounded);
- the curve does not rise with probability (``b <= 0``);
- the target is reached only above the highest reviewed probability (extrapolation);
- fewer than :data:`MIN_ABOVE` reviewed detections lie at or above the threshold.

A target reached below the lowest reviewed probability gives that lowest probability (below
it nothing was looked at).

**The file** (``thresholds.json``)::

    {"format": "echocam-thresholds/1", "run_id": ..., "model_sha256": ...,
     "targets": [0.9, 0.95, 0.99], "rule": "...",
     "classes": {"Wren": {"n": 40, "yes": 30, "no": 10,
                          "fit": {"intercept": -6.1, "slope": 9.8},
                          "thresholds": {"0.90": 0.62, "0.95": 0.81, "0.99": null},
                          "support": {"0.90": {"reviewed": 21, "yes": 20, "detections": 340,
                                               "expected_precision": 0.96}, ...},
                          "notes": {"0.99": "reached only above the highest reviewed ..."}}},
     "thresholds": {"0.90": {"Wren": 0.62}, "0.95": {"Wren": 0.81}, "0.99": {}}}

``thresholds`` holds, per target precision, the plain ``{"class": probability}`` map a run's
``--min-probability FILE --precision 0.95`` takes (nulls left out).  A plain map of that form is
a thresholds file too.  This module imports no numpy at import time (the slim producer image
loads thresholds files); the fit imports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from echocam.errors import InvalidParams

FORMAT = "echocam-thresholds/1"
TARGETS = (0.90, 0.95, 0.99)
DEFAULT_PRECISION = 0.95
MIN_VERDICTS = 10  # yes + no on a class before any threshold is given
MIN_ABOVE = 5  # reviewed detections at or above a threshold
RIDGE = 1e-3  # L2 penalty on the slope and intercept of the fit

RULE = (
    "per class, logistic fit of verdict (plain yes = 1; no or another class = 0) on probability; "
    "threshold = the probability where the fitted curve reaches the target precision; null "
    f"where fewer than {MIN_VERDICTS} yes+no verdicts, no yes or no no, a curve that does not "
    "rise, a target reached only above the highest reviewed probability, or fewer than "
    f"{MIN_ABOVE} reviewed detections at or above the threshold"
)


def precision_key(precision: float) -> str:
    """The key a target precision has in a thresholds file: ``0.95`` -> ``"0.95"``."""
    return f"{float(precision):.2f}"


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def fit_logistic(
    *, probabilities: Sequence[float], outcomes: Sequence[int], ridge: float = RIDGE
) -> tuple[float, float]:
    """(intercept, slope) of ``P(1 | p) = sigmoid(a + b p)``: penalised maximum likelihood by
    Newton's method (IRLS).  ``probabilities`` in [0, 1]; ``outcomes`` 0 or 1."""
    import numpy as np

    p = np.asarray(probabilities, np.float64)
    y = np.asarray(outcomes, np.float64)
    x = np.stack([np.ones_like(p), p], axis=1)
    w = np.zeros(2)
    penalty = ridge * np.eye(2)
    for _ in range(100):
        mu = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (y - mu) - penalty @ w
        hess = (x * (mu * (1 - mu))[:, None]).T @ x + penalty
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.abs(step).max() < 1e-9:
            break
    return float(w[0]), float(w[1])


def threshold_at(*, intercept: float, slope: float, target: float) -> float | None:
    """The probability where ``sigmoid(intercept + slope p)`` equals ``target``; None for a
    curve that does not rise."""
    if slope <= 0:
        return None
    return (math.log(target / (1 - target)) - intercept) / slope


def class_thresholds(
    *,
    probabilities: Sequence[float],
    outcomes: Sequence[int],
    targets: Sequence[float] = TARGETS,
    table: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One class's entry of a thresholds file from its decided verdicts (``probabilities`` the
    detections', ``outcomes`` 1 where the model was right) and, optionally, the probabilities of
    all the class's detections in the run's table (``table``: counts and expected precision)."""
    n, yes = len(outcomes), int(sum(outcomes))
    entry: dict[str, Any] = {"n": n, "yes": yes, "no": n - yes, "fit": None}
    entry["thresholds"] = {precision_key(t): None for t in targets}
    entry["support"], entry["notes"] = {}, {}
    why = None
    if n < MIN_VERDICTS:
        why = f"too few verdicts: {n} (a threshold needs at least {MIN_VERDICTS})"
    elif yes == 0:
        why = "no verdict says yes: the curve is not bounded"
    elif yes == n:
        why = "no verdict says no: precision cannot be bounded from these verdicts"
    if why:
        entry["notes"] = {precision_key(t): why for t in targets}
        return entry
    a, b = fit_logistic(probabilities=probabilities, outcomes=outcomes)
    entry["fit"] = {"intercept": round(a, 6), "slope": round(b, 6)}
    low, high = min(probabilities), max(probabilities)
    for target in targets:
        k = precision_key(target)
        t = threshold_at(intercept=a, slope=b, target=target)
        if t is None:
            entry["notes"][k] = "the fitted curve does not rise with probability"
            continue
        if t > high:
            entry["notes"][k] = (
                f"reached only at probability {t:.3f}, above the highest reviewed {high:.3f}"
            )
            continue
        t = max(t, low)
        above = [(p, o) for p, o in zip(probabilities, outcomes, strict=True) if p >= t]
        support: dict[str, Any] = {"reviewed": len(above), "yes": int(sum(o for _, o in above))}
        if table is not None:
            kept = [p for p in table if p >= t]
            support["detections"] = len(kept)
            support["expected_precision"] = (
                round(sum(sigmoid(a + b * p) for p in kept) / len(kept), 4) if kept else None
            )
        entry["support"][k] = support
        if len(above) < MIN_ABOVE:
            entry["notes"][k] = (
                f"only {len(above)} reviewed detections at or above {t:.3f} "
                f"(a threshold needs at least {MIN_ABOVE})"
            )
            continue
        entry["thresholds"][k] = round(t, 4)
    return entry


def thresholds_file(
    *,
    decided: Iterable[dict[str, Any]],
    run: Mapping[str, Any],
    table: Mapping[str, Sequence[float]] | None = None,
    targets: Sequence[float] = TARGETS,
) -> dict[str, Any]:
    """A thresholds file (see the module) from the decided verdicts of a run (one per detection:
    ``echocam.review.verdicts.decided``), with ``table`` the probabilities of the run's
    detections per class (optional)."""
    from echocam.review.verdicts import correct

    per: dict[str, tuple[list[float], list[int]]] = {}
    for v in decided:
        if v.get("probability") is None:
            continue
        ps, ys = per.setdefault(v["class_name"], ([], []))
        ps.append(float(v["probability"]))
        ys.append(int(correct(v)))
    classes = {
        name: class_thresholds(
            probabilities=ps,
            outcomes=ys,
            targets=targets,
            table=None if table is None else table.get(name, []),
        )
        for name, (ps, ys) in sorted(per.items())
    }
    simple = {
        precision_key(t): {
            name: c["thresholds"][precision_key(t)]
            for name, c in classes.items()
            if c["thresholds"][precision_key(t)] is not None
        }
        for t in targets
    }
    return {
        "format": FORMAT,
        "run_id": run.get("run_id"),
        "model_sha256": (run.get("model") or {}).get("sha256"),
        "targets": [float(t) for t in targets],
        "rule": RULE,
        "classes": classes,
        "thresholds": simple,
    }


def load_thresholds(
    source: str | Path | Mapping[str, Any], *, precision: float = DEFAULT_PRECISION
) -> dict[str, float]:
    """Per-class minimum probabilities from a thresholds file or a plain ``{"class": p}`` map.

    ``source`` is a path, JSON text (starting with ``{``) or the parsed JSON.  From a file
    :func:`thresholds_file` wrote, the map at ``precision`` (a target it holds); classes whose
    threshold is null there are left out (they keep the run's floor).  Raises
    :class:`~echocam.errors.InvalidParams` for anything else.
    """
    if isinstance(source, Mapping):
        doc, where = source, "thresholds"
    else:
        text, where = str(source), str(source)
        if not text.lstrip().startswith("{"):
            try:
                text = Path(text).read_text(encoding="utf-8-sig")
            except OSError as e:
                raise InvalidParams(f"thresholds {where}: cannot read it ({e.strerror})") from e
        else:
            where = "thresholds JSON"
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise InvalidParams(f"{where}: not JSON ({e})") from e
    if not isinstance(doc, Mapping):
        raise InvalidParams(f"{where}: a JSON object, {{class: probability}} or a thresholds file")
    if "thresholds" in doc and isinstance(doc["thresholds"], Mapping):
        maps = doc["thresholds"]
        k = precision_key(precision)
        if k not in maps:
            have = ", ".join(sorted(maps)) or "none"
            raise InvalidParams(f"{where}: no thresholds for precision {k} (it has {have})")
        doc, where = maps[k], f"{where} at precision {k}"
        if not isinstance(doc, Mapping):
            raise InvalidParams(f"{where}: not a {{class: probability}} map")
    out: dict[str, float] = {}
    for name, p in doc.items():
        if p is None:
            continue
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise InvalidParams(f"{where}: class {name!r}: {p!r} is not a probability in [0, 1]")
        if not isinstance(name, str) or not name:
            raise InvalidParams(f"{where}: {name!r} is not a class name")
        out[name] = float(p)
    return out


def threshold_for(thresholds: Mapping[str, float], class_name: str, *, floor: float = 0.0) -> float:
    """The minimum probability of ``class_name``: its threshold, else ``floor``."""
    return thresholds.get(class_name, floor)


def passes(
    thresholds: Mapping[str, float], class_name: str, probability: float, *, floor: float = 0.0
) -> bool:
    """Whether a detection of ``class_name`` at ``probability`` is kept (>= its threshold)."""
    return probability >= threshold_for(thresholds, class_name, floor=floor)
