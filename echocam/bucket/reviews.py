"""Verdicts: what reviewers said about a run's detections, kept under the run's ``_reviews/``.

A *verdict* judges one detection (source key, window start, class) of one run: ``yes`` (the class
is there), ``no``, ``skip`` (seen, not judged) or ``undo`` (withdraws the reviewer's last verdict on
it), optionally with a corrected class ``label``.  Verdicts are data, like records:

- a batch of verdicts is one new object ``_reviews/<UTC time>-<random>.jsonl``, written once and
  never rewritten (temp + rename in a directory, one PUT on S3), so two reviewers, two viewers
  or a viewer killed mid-burst never overwrite anything;
- reading merges every object: per (reviewer, detection) the verdict given last wins (``at``, the
  time the reviewer gave it; ties in the order written), and a last ``undo`` leaves no verdict.

No name a reviewer types reaches a key: object keys are made of the time and random hex only.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from echocam.bucket.detections import detection_id
from echocam.bucket.storage import Store
from echocam.errors import InvalidParams

PREFIX = "_reviews/"
SUFFIX = ".jsonl"
VERDICTS = ("yes", "no", "skip", "undo")
JUDGED = ("yes", "no")  # the verdicts that label a detection
MAX_BATCH = 1000  # verdicts in one object

#: A reviewer's name: a letter or digit, then letters, digits, ``._@-``; at most 64.
REVIEWER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
#: A class name a reviewer may type (a corrected or a new class): a letter, then letters,
#: digits, spaces and ``_-.'()``; at most 80.  It becomes a label in a CSV and a model's class.
CLASS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9 _.'()-]{0,79}")

#: A verdict's fields, in the order each JSON line holds them.
FIELDS = (
    "id",  # KEY@WINDOW_START#CLASS (echocam.bucket.detections.detection_id)
    "run_id",
    "model_sha256",
    "source_key",
    "begin_s",  # the window
    "end_s",
    "class_name",
    "verdict",
    "label",  # the corrected class, or None
    "reviewer",
    "at",  # when the reviewer gave it (ISO 8601, UTC)
    "received_at",  # when the viewer stored it
    "probability",  # what the reviewer was shown
    "box",  # evidence box [begin_s, end_s, low_hz, high_hz]
    "call",  # call box, or None
)


def check_reviewer(name: str) -> str:
    if not isinstance(name, str) or not REVIEWER.fullmatch(name):
        raise InvalidParams(
            f"reviewer {name!r}: 1-64 letters, digits or ._@- (starting with a letter or digit)"
        )
    return name


def check_class_name(name: str) -> str:
    if not isinstance(name, str) or not CLASS_NAME.fullmatch(name) or name != name.strip():
        raise InvalidParams(
            f"class {name!r}: 1-80 letters, digits, spaces or _-.'() starting with a letter"
        )
    return name


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> str:
    """``text`` as a UTC ISO time with microseconds (the form :func:`now_iso` writes)."""
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidParams(f"time {text!r}: not an ISO 8601 time") from e
    if t.tzinfo is None:
        raise InvalidParams(f"time {text!r}: needs a time zone")
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def verdict(
    row: dict[str, Any],
    *,
    verdict: str,
    reviewer: str,
    run: dict[str, Any],
    label: str | None = None,
    at: str | None = None,
) -> dict[str, Any]:
    """A checked verdict on the detections-table ``row`` of ``run`` (run.json)."""
    if verdict not in VERDICTS:
        raise InvalidParams(f"verdict {verdict!r}: one of {', '.join(VERDICTS)}")
    if label is not None:
        check_class_name(label)
        if verdict != "yes":
            raise InvalidParams("a corrected class goes with the verdict 'yes' (it is that class)")
    box = [row.get(k) for k in ("box_begin_s", "box_end_s", "box_low_hz", "box_high_hz")]
    call = [row.get(k) for k in ("call_begin_s", "call_end_s", "call_low_hz", "call_high_hz")]
    return {
        "id": detection_id(row["source_key"], row["begin_s"], row["class_name"]),
        "run_id": run.get("run_id"),
        "model_sha256": (run.get("model") or {}).get("sha256"),
        "source_key": row["source_key"],
        "begin_s": float(row["begin_s"]),
        "end_s": float(row["end_s"]),
        "class_name": row["class_name"],
        "verdict": verdict,
        "label": label,
        "reviewer": check_reviewer(reviewer),
        "at": parse_time(at) if at else now_iso(),
        "received_at": now_iso(),
        "probability": row.get("probability"),
        "box": None if None in box else box,
        "call": None if None in call else call,
    }


def new_key() -> str:
    """A fresh object key: the time first, so a listing comes roughly in writing order."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{PREFIX}{stamp}-{secrets.token_hex(8)}{SUFFIX}"


def write_batch(store: Store, verdicts: list[dict[str, Any]]) -> str:
    """Store ``verdicts`` as one new object; its key.  Durable once this returns."""
    if not verdicts:
        raise ValueError("no verdicts to write")
    if len(verdicts) > MAX_BATCH:
        raise InvalidParams(f"{len(verdicts)} verdicts in one batch: at most {MAX_BATCH}")
    body = "".join(json.dumps({k: v.get(k) for k in FIELDS}) + "\n" for v in verdicts)
    key = new_key()
    if not store.put(key, body.encode(), if_absent=True):  # 64 random bits: never, but never
        raise FileExistsError(key)
    return key


def read_batch(store: Store, key: str) -> list[dict[str, Any]]:
    data, _ = store.get(key)
    out = []
    for line in data.decode().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


@dataclass
class Reviews:
    """Every verdict of a run, merged; :meth:`refresh` reads only objects it has not read.

    ``latest[(reviewer, id)]`` is the verdict that stands (undone ones are absent);
    ``history`` holds every verdict read, in merge order.
    """

    store: Store
    latest: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _last: dict[tuple[str, str], tuple] = field(default_factory=dict)  # order key of the last
    _read: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, store: Store) -> Reviews:
        reviews = cls(store)
        reviews.refresh()
        return reviews

    def refresh(self) -> int:
        """Read the objects written since the last call (by anyone); how many."""
        new = [k for k in self.store.keys(under=PREFIX) if k.endswith(SUFFIX)]
        new = [k for k in new if k not in self._read]
        for key in new:
            try:
                batch = read_batch(self.store, key)
            except FileNotFoundError:  # listed, then gone: not ours to explain; skip it
                continue
            self.add(key, batch)
        return len(new)

    def add(self, key: str, batch: Iterable[dict[str, Any]]) -> None:
        """Merge a batch stored under ``key`` (once per key)."""
        with self._lock:
            if key in self._read:
                return
            self._read.add(key)
            for line, v in enumerate(batch):
                who = (v["reviewer"], v["id"])
                order = (v["at"], key, line)
                if who in self._last and self._last[who] > order:
                    continue  # a later verdict on it is already merged
                self._last[who] = order
                if v["verdict"] == "undo":
                    self.latest.pop(who, None)
                else:
                    self.latest[who] = v

    def write(self, verdicts: list[dict[str, Any]]) -> str:
        """Store a batch and merge it; its key."""
        key = write_batch(self.store, verdicts)
        self.add(key, verdicts)
        return key

    def standing(self, *, reviewer: str | None = None) -> Iterator[dict[str, Any]]:
        """The verdicts that stand (of ``reviewer``, or everyone's)."""
        with self._lock:
            items = list(self.latest.items())
        for (who, _), v in items:
            if reviewer is None or who == reviewer:
                yield v

    def seen(self, reviewer: str) -> set[str]:
        """Ids of the detections ``reviewer`` has a standing verdict on (skips included)."""
        return {v["id"] for v in self.standing(reviewer=reviewer)}
