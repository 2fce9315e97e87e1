"""Labelled examples: one folder per class or a labels CSV; the split by recording; a summary.

An *example* is a recording (or an annotated span of one) with a class.  A *recording* is a
source key; every example of one recording goes to the same side of the split.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from echocam.bucket.storage import Store

#: A call's box: start_s, end_s, low_hz, high_hz.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Example:
    """A labelled stretch of a recording: the whole of it, or ``start_s``..``end_s`` seconds,
    optionally within ``low_hz``..``high_hz`` (a box: where the call is)."""

    key: str  # relative to the source's root
    label: int  # index into the class names
    start_s: float | None = None
    end_s: float | None = None
    low_hz: float | None = None
    high_hz: float | None = None
    background: bool = False  # a key of the --background recordings, not of the source

    @property
    def span(self) -> tuple[float, float] | None:
        return None if self.start_s is None else (self.start_s, self.end_s)

    @property
    def recording(self) -> str:
        """The recording's name across both sources: ``background:KEY`` for the
        ``--background`` source's, whose keys may repeat the labelled source's."""
        return f"background:{self.key}" if self.background else self.key

    def box(self, *, top_hz: float) -> Box | None:
        """(start_s, end_s, low_hz, high_hz) of a span, every frequency up to ``top_hz`` where
        the row gives none; None for a whole recording."""
        if self.start_s is None:
            return None
        low = 0.0 if self.low_hz is None else self.low_hz
        return (self.start_s, self.end_s, low, top_hz if self.high_hz is None else self.high_hz)


@dataclass
class Labelled:
    """A source's examples and the class names their labels index."""

    source: str
    class_names: list[str]
    examples: list[Example]

    def recordings(self) -> list[str]:
        """Distinct keys, sorted (``background:KEY`` for the ``--background`` source's)."""
        return sorted({e.recording for e in self.examples})

    def keys_sha256(self) -> str:
        """sha256 of the sorted distinct keys, one per line: the data's identity."""
        return hashlib.sha256("\n".join(self.recordings()).encode()).hexdigest()

    def summary(self) -> dict:
        """Per class: examples and recordings; and the keys' sha256."""
        per: dict[str, dict[str, int]] = {
            n: {"examples": 0, "recordings": 0} for n in self.class_names
        }
        seen: dict[str, set[str]] = defaultdict(set)
        for e in self.examples:
            name = self.class_names[e.label]
            per[name]["examples"] += 1
            seen[name].add(e.key)
        for name, keys in seen.items():
            per[name]["recordings"] = len(keys)
        return {
            "source": self.source,
            "classes": per,
            "recordings": len(self.recordings()),
            "examples": len(self.examples),
            "keys_sha256": self.keys_sha256(),
        }


def list_folders(
    store: Store,
    *,
    extensions: tuple[str, ...],
    page_size: int = 1000,
    class_names: Sequence[str] | None = None,
) -> Labelled:
    """Every audio object under ``store`` as an example of the class its top folder names.

    Objects directly under the root (no folder) are not examples.  ``class_names`` fixes the
    classes and their order (a validation source must use the training classes; an object of
    another class raises ValueError); otherwise they are the folder names, sorted.  Keys are
    streamed from the store (only the key strings are kept).
    """
    pairs = [
        (info.key, info.key.split("/", 1)[0])
        for info in store.list(suffixes=extensions, page_size=page_size)
        if "/" in info.key
    ]
    names = list(class_names) if class_names is not None else sorted({c for _, c in pairs})
    return Labelled(store.uri, names, _examples(((k, c, None, None) for k, c in pairs), names))


def read_labels(text: str, *, source: str, class_names: Sequence[str] | None = None) -> Labelled:
    """Examples from a CSV with a header ``key,label[,start_s,end_s[,low_hz,high_hz]]``.

    ``key`` is relative to the source; a row without ``start_s``/``end_s`` (or with them empty)
    labels the whole recording.  ``low_hz``/``high_hz`` bound a span's call in frequency (the
    pointing game's box).  A recording may have several rows (spans of several classes).
    """
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"key", "label"} <= set(rows[0]):
        raise ValueError(
            "a labels CSV needs a header with the columns key,label[,start_s,end_s"
            "[,low_hz,high_hz]]"
        )
    parsed = []
    for i, row in enumerate(rows, start=2):
        span = _pair(row, "start_s", "end_s", line=i, low=0.0)
        band = _pair(row, "low_hz", "high_hz", line=i, low=0.0)
        if band[0] is not None and span[0] is None:
            raise ValueError(f"labels CSV line {i}: low_hz and high_hz need start_s and end_s")
        parsed.append((row["key"].strip(), row["label"].strip(), *span, *band))
    names = list(class_names) if class_names is not None else sorted({r[1] for r in parsed})
    return Labelled(source, names, _examples(parsed, names))


def _pair(row: dict, a: str, b: str, *, line: int, low: float) -> tuple:
    """The floats of columns ``a`` < ``b`` of a CSV row, or (None, None) where both are empty."""
    x, y = (row.get(a) or "").strip(), (row.get(b) or "").strip()
    if bool(x) != bool(y):
        raise ValueError(f"labels CSV line {line}: give both {a} and {b}, or neither")
    if not x:
        return (None, None)
    pair = (float(x), float(y))
    if not low <= pair[0] < pair[1]:
        raise ValueError(f"labels CSV line {line}: need {low:g} <= {a} < {b}, got {pair}")
    return pair


def _examples(rows: Iterable[tuple], names: Sequence[str]) -> list[Example]:
    """Examples of (key, label, start_s, end_s[, low_hz, high_hz]) rows, sorted by key and start."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for key, label, *rest in rows:
        if label not in index:
            raise ValueError(f"{key}: class {label!r} is not one of the model's {list(names)}")
        out.append(Example(key, index[label], *rest))
    out.sort(key=lambda e: (e.key, e.start_s or 0.0))
    return out


def extend_classes(labelled: Labelled, base: Sequence[str]) -> Labelled:
    """``labelled`` over the class names ``base`` (in their order: a previous model's), followed
    by its own names that ``base`` lacks (sorted); the examples' labels index the new list."""
    names = list(base) + sorted(set(labelled.class_names) - set(base))
    index = {n: i for i, n in enumerate(names)}
    examples = [
        dataclasses.replace(e, label=index[labelled.class_names[e.label]])
        for e in labelled.examples
    ]
    return Labelled(labelled.source, names, examples)


def with_background_class(labelled: Labelled, keys: Sequence[str], *, name: str) -> Labelled:
    """``labelled`` with one more class, ``name``, whose examples are the whole recordings
    ``keys`` of the ``--background`` source: a class with no call in it, for sources that have
    none (without one, a model's CAMs point away from the calls).  Unchanged where the source
    has examples of ``name``; a name already listed without examples (a previous model's
    class) keeps its place."""
    names = list(labelled.class_names)
    if name in names and any(e.label == names.index(name) for e in labelled.examples):
        return labelled
    if name not in names:
        names.append(name)
    extra = [Example(k, names.index(name), background=True) for k in sorted(keys)]
    return Labelled(labelled.source, names, labelled.examples + extra)


def split_by_recording(
    labelled: Labelled, *, val_fraction: float, seed: int
) -> tuple[Labelled, Labelled]:
    """(train, validation): whole recordings, ``val_fraction`` of each class's recordings.

    A recording's class for stratification is the label of its first example.  Each class with
    at least two recordings gives at least one to validation; the choice is a seeded shuffle of
    the sorted keys, so the same data and seed give the same split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be within [0, 1)")
    first: dict[tuple[bool, str], int] = {}  # (from --background, key): a recording
    for e in labelled.examples:
        first.setdefault((e.background, e.key), e.label)
    by_class: dict[int, list[tuple[bool, str]]] = defaultdict(list)
    for key in sorted(first):
        by_class[first[key]].append(key)
    rng = np.random.default_rng(seed)
    val_keys: set[tuple[bool, str]] = set()
    for label in sorted(by_class):
        keys = by_class[label]
        n = round(val_fraction * len(keys))
        if val_fraction > 0 and len(keys) >= 2:
            n = min(max(n, 1), len(keys) - 1)
        val_keys.update(keys[i] for i in rng.permutation(len(keys))[:n])
    train = [e for e in labelled.examples if (e.background, e.key) not in val_keys]
    val = [e for e in labelled.examples if (e.background, e.key) in val_keys]
    names = labelled.class_names
    return Labelled(labelled.source, names, train), Labelled(labelled.source, names, val)
