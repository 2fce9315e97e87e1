"""A Raven selection table, edited in Raven, back as verdicts.

echocam writes one ``selections.txt`` per recording (``echocam.bucket.detections.raven_table``):
one row a selection, which merges one class's touching detections.  A reviewer adds an
annotation column named **Verdict** and fills it in:

- ``y``, ``yes``, ``1``, ``true``: the class in ``Species`` is there;
- ``n``, ``no``, ``0``, ``false``: it is not;
- ``s``, ``skip``, ``?``: looked at, not judged;
- any other text: the right class name (a correction; it may be a class the model does not
  know; the safe pattern of ``echocam.bucket.reviews.CLASS_NAME``);
- empty: not reviewed (no verdict).

``Species`` must stay as echocam wrote it: it names the detections the row judges.  Each row
gives its verdict to every detection of the run's table with the same recording and class whose
box (call box, else evidence box) overlaps the row's ``Begin Time (s)``..``End Time (s)``.
The recording is ``--key``, else the row's ``Begin File`` / ``Begin Path`` column (Raven writes
it when the table spans files), else the table's own place in the run
(``<recording's output folder>/selections.txt``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from echocam.bucket import reviews
from echocam.bucket.keys import output_key
from echocam.errors import EchoCamError, InvalidParams

VERDICT_COLUMN = "Verdict"
YES = frozenset({"y", "yes", "1", "true"})
NO = frozenset({"n", "no", "0", "false"})
SKIP = frozenset({"s", "skip", "?"})
FILE_COLUMNS = ("Begin File", "Begin Path")
SELECTIONS_NAME = "selections.txt"
TOLERANCE_S = 1e-3  # a row's times as Raven rounds them
SPANS = (("call_begin_s", "call_end_s"), ("box_begin_s", "box_end_s"), ("begin_s", "end_s"))


def parse_verdict(text: str, *, line: int) -> tuple[str, str | None] | None:
    """(verdict, corrected class or None) of a Verdict cell; None for an empty one."""
    raw = (text or "").strip()
    if not raw:
        return None
    low = raw.lower()
    if low in YES:
        return "yes", None
    if low in NO:
        return "no", None
    if low in SKIP:
        return "skip", None
    try:
        return "yes", reviews.check_class_name(raw)
    except InvalidParams as e:
        raise InvalidParams(
            f"line {line}: Verdict {raw!r} is not y/n/s nor a class name ({e.message})"
        ) from None


def parse_table(text: str) -> list[dict[str, Any]]:
    """The reviewed rows of a selection table (tab-separated, a header row): line, begin_s,
    end_s (s), class_name, verdict, label, file (the ``Begin File``/``Begin Path`` cell or
    None).  Rows without a verdict are left out."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")), delimiter="\t")
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    need = ("Begin Time (s)", "End Time (s)", "Species")
    missing = [c for c in need if c not in columns]
    if missing:
        raise InvalidParams(f"line 1: the selection table has no {', '.join(missing)} column")
    if VERDICT_COLUMN not in columns:
        raise InvalidParams(
            f"line 1: no {VERDICT_COLUMN} column: add an annotation column named "
            f"{VERDICT_COLUMN} in Raven (y, n, s, or the right class name)"
        )
    out = []
    for line, row in enumerate(reader, start=2):
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        said = parse_verdict(row.get(VERDICT_COLUMN) or "", line=line)
        if said is None:
            continue
        try:
            begin, end = float(row["Begin Time (s)"]), float(row["End Time (s)"])
        except (TypeError, ValueError):
            raise InvalidParams(f"line {line}: Begin/End Time (s) must be numbers") from None
        if not 0.0 <= begin <= end:
            raise InvalidParams(f"line {line}: need 0 <= Begin Time <= End Time: {begin}, {end}")
        name = (row.get("Species") or "").strip()
        if not name:
            raise InvalidParams(f"line {line}: empty Species")
        file = next((row[c].strip() for c in FILE_COLUMNS if (row.get(c) or "").strip()), None)
        verdict, label = said
        if label == name:
            label = None  # "corrected" to its own class: a plain yes
        out.append(
            {"line": line, "begin_s": begin, "end_s": end, "class_name": name,
             "verdict": verdict, "label": label, "file": file}
        )  # fmt: skip
    return out


def key_of_file(file: str, keys: Iterable[str], *, line: int) -> str:
    """The source key a ``Begin File``/``Begin Path`` cell names: the key itself, or the one
    key that ends with it (a path's tail, or the file name)."""
    keys = list(keys)
    if file in keys:
        return file
    tail = file.replace("\\", "/")
    found = [k for k in keys if tail.endswith("/" + k) or k.endswith("/" + tail.rsplit("/")[-1])]
    found = found or [k for k in keys if k == tail.rsplit("/")[-1]]
    if len(set(found)) != 1:
        why = "no recording" if not found else f"{len(set(found))} recordings"
        raise InvalidParams(f"line {line}: {file!r} matches {why} of the run; give --key")
    return found[0]


def key_of_table(path_in_run: str, keys: Iterable[str]) -> str | None:
    """The source key whose ``selections.txt`` is at ``path_in_run`` (relative to the run)."""
    path = path_in_run.replace("\\", "/").lstrip("/")
    for k in keys:
        if output_key(k, SELECTIONS_NAME) == path:
            return k
    return None


def _span(d: Mapping[str, Any]) -> tuple[float, float]:
    """A detection's box in time as its selection drew it: the call box, else the evidence box,
    else the window."""
    for a, b in SPANS:
        if d.get(a) is not None:
            return float(d[a]), float(d[b])
    raise ValueError(d)


def verdicts_of(
    rows: Sequence[Mapping[str, Any]],
    *,
    detections: Sequence[Mapping[str, Any]],
    run: Mapping[str, Any],
    reviewer: str,
    key: str | None = None,
    at: str | None = None,
) -> list[dict[str, Any]]:
    """The verdicts of parsed table ``rows`` (:func:`parse_table`) on the run's ``detections``
    (detections-table rows): one per matched detection.  ``key`` is the recording of rows that
    name no file.  Raises :class:`~echocam.errors.InvalidParams` (with the line) for a row that
    matches no detection, or two rows that judge one detection differently."""
    reviews.check_reviewer(reviewer)
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for d in detections:
        by_key.setdefault(d["source_key"], []).append(d)
    at = at or reviews.now_iso()
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    for r in rows:
        line = r["line"]
        if r["file"] is not None and key is None:
            source = key_of_file(r["file"], by_key, line=line)
        elif key is not None:
            source = key
        else:
            raise InvalidParams(
                f"line {line}: which recording? the table has no Begin File column and is not "
                "a selections.txt of the run: give --key SOURCE_KEY"
            )
        matched = [
            d
            for d in by_key.get(source, [])
            if d["class_name"] == r["class_name"]
            and _span(d)[0] <= r["end_s"] + TOLERANCE_S
            and _span(d)[1] >= r["begin_s"] - TOLERANCE_S
        ]
        if not matched:
            raise InvalidParams(
                f"line {line}: no detection of {r['class_name']!r} in {source!r} overlaps "
                f"{r['begin_s']:g}-{r['end_s']:g} s (keep Species as echocam wrote it; put a "
                f"correction in the {VERDICT_COLUMN} column)"
            )
        for d in matched:
            try:
                v = reviews.verdict(
                    d, verdict=r["verdict"], label=r["label"], reviewer=reviewer, run=run, at=at
                )
            except EchoCamError as e:
                raise InvalidParams(f"line {line}: {e.message}") from None
            old = out.get(v["id"])
            if old and (old[1]["verdict"], old[1]["label"]) != (v["verdict"], v["label"]):
                raise InvalidParams(
                    f"lines {old[0]} and {line} judge detection {v['id']!r} differently"
                )
            out[v["id"]] = (line, v)
    return [v for _, v in out.values()]


def batches(verdicts: Sequence[dict[str, Any]], *, size: int = reviews.MAX_BATCH):
    """``verdicts`` in lists of at most ``size`` (one stored object each)."""
    for i in range(0, len(verdicts), size):
        yield list(verdicts[i : i + size])
