"""The done index: next to each record, an empty object whose key says what the skip rule needs.

``_index/<source>!/<etag>.<fingerprint>.<digest>.<outcome>`` under the output prefix, one per
current record: the source key (order-preserving escape, below), the source ETag and run
fingerprint the record answers, the first 16 hex digits of the md5 of the record's bytes, and
``ok`` or the error code.  A listing of ``_index/`` therefore tells the producer and the manifest
step, for every source in one request per 1000, what its current record says, in the same order
as a listing of the sources, so the two listings are merged without reading a record.

The record stays the truth; the index only ever makes work *certain* to be skippable:

- a writer puts an *intent* (``<source>!/~<uuid>``) first, then a *tombstone* of the marker of
  the record it replaces (``<source>!/-<marker name>``: that marker is no longer current, where
  ever it is) and deletes that marker, writes the outputs and the record, puts the new marker,
  and deletes its intent last;
- a source is *certain* when its folder holds exactly one marker that no tombstone names, and
  nothing but tombstones besides.  Then that marker is its current record's: a crashed writer
  leaves its intent (so the source is unsure), and a marker is deleted, or named by a
  tombstone, only before its deleter writes a newer record (so the current record's marker,
  put after its record, is never ruled out while that record is current);
- unsure sources (an intent, several markers, a name this version does not know) have their
  record read; sources without a folder have no record unless it predates the index (see
  ``echocam/bucket/manifest.py``) or its key is too long for a marker, so "no folder" never skips a
  recording without a read (it is enqueued, or read where a missing record would skip it).

Compaction (``echocam/bucket/manifest.py``) *folds* markers: it writes the current marker of every
source it kept into one *segment* (``_index/_segments/<time>-<uuid>.tsv.gz``: gzip'd lines
``<escaped source>\t<marker name>``, sources in byte order), uploads it, and only then deletes
the segments and the folder objects it read.  A source's markers are then those of its folder
and of every segment (:class:`View`), and the rule above holds over that union: every current
record's marker is in a folder or a segment at all times, a tombstone rules out a folded marker
as it rules out one in the folder (a record replaced after folding is certain again once its
new marker is put), and a marker left behind anywhere without one (a late repair, two
compactions at once) only makes its source unsure.  A reader that listed the segments before a
compaction moved markers out of the folders it reads afterwards would miss them:
:meth:`View.unchanged` tells it to start again.

Source keys are escaped so that index keys sort like the source keys they name, both in S3's
byte order and in the folder-by-folder order of servers that list a directory tree (SeaweedFS):
characters up to ``#`` become ``#`` and two hex digits, and ``!/`` ends the source.  No torch.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import itertools
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, BinaryIO, NamedTuple

from echocam.bucket.keys import MAX_KEY_BYTES, NAME_BYTES
from echocam.bucket.storage import ObjectInfo, Store

INDEX = "_index/"
#: Compaction's sorted files of markers it folded (and deleted from the folders).
SEGMENTS = INDEX + "_segments/"
_SEGMENT_NAME = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{32}\.tsv\.gz")
#: Present when every record under the output prefix was written with its marker (a run wrote
#: it into an empty prefix, or a full compaction put the markers of older records in a segment).
COMPLETE = "_manifest/index.json"
_ESC, _END = "#", "!"
_DEAD = "-"  # a tombstone's name: "-" and the name of a marker that is no longer current
# A marker's folder is its escaped source key and _END: each component must stay a valid file
# name (a local store's), with a margin.
_MAX_COMPONENT_BYTES = NAME_BYTES - 5
_HEX_ETAG = re.compile(r'"([0-9a-f]{32}(?:-[0-9]+)?)"')
_MARKER = re.compile(
    r"(none|[0-9a-f]{32}(?:-[0-9]+)?|h[0-9a-f]{64})\.([0-9a-f]{64})\.([0-9a-f]{16})\.([a-z_]+)"
)


def encode(source_key: str) -> str | None:
    """``source_key`` escaped for an index key (order-preserving); None where no marker fits."""
    components = source_key.split("/")
    if any(s in ("", ".", "..") for s in components):
        return None  # such keys are rare: they are always enqueued and read (never skipped blind)
    out = "".join(f"{_ESC}{ord(c):02X}" if c <= _ESC else c for c in source_key)
    if len(out.encode()) > MAX_KEY_BYTES or any(
        len(s.encode()) + 1 > _MAX_COMPONENT_BYTES for s in out.split("/")
    ):
        return None
    return out


_UNESCAPED = {f"{i:02X}": chr(i) for i in range(ord(_ESC) + 1)}  # what encode() escapes


def decode(encoded: str) -> str:
    if _ESC not in encoded:
        return encoded  # most keys escape nothing
    parts = encoded.split(_ESC)
    try:
        for i in range(1, len(parts)):  # each part after the first starts with an escape
            parts[i] = _UNESCAPED[parts[i][:2]] + parts[i][2:]
    except KeyError:  # not written by encode(): left as it is (it names no listed source)
        return encoded
    return "".join(parts)


def folder(source_key: str) -> str | None:
    """Relative key of the folder that holds ``source_key``'s marker (None: it has none)."""
    enc = encode(source_key)
    return None if enc is None else f"{INDEX}{enc}{_END}/"


def etag_token(etag: str | None) -> str:
    """An ETag as a key fragment: an md5 ETag as its hex, any other as its sha256 (injective)."""
    if etag is None:
        return "none"
    m = _HEX_ETAG.fullmatch(etag)
    return m[1] if m else "h" + hashlib.sha256(etag.encode()).hexdigest()


def digest(data: bytes) -> str:
    """What names one version of a record: 16 hex digits of the md5 of its bytes."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()[:16]


class Marker(NamedTuple):
    """A marker's name, parsed.  A tuple: made once per source in every listing and segment,
    where a frozen dataclass's ``__init__`` cost more than the rest of the parse."""

    etag: str  # etag_token of the source ETag the record answers
    fingerprint: str
    digest: str
    outcome: str  # "ok" or the record's error code

    @property
    def name(self) -> str:
        return f"{self.etag}.{self.fingerprint}.{self.digest}.{self.outcome}"

    @classmethod
    def parse(cls, name: str) -> Marker | None:
        m = _MARKER.fullmatch(name)
        return cls._make(m.groups()) if m else None

    @classmethod
    def of(cls, record: dict[str, Any], record_digest: str) -> Marker:
        outcome = "ok" if record["status"] == "ok" else (record.get("error_code") or "failed")
        return cls(
            etag_token(record.get("source_etag")),
            record["fingerprint"],
            record_digest,
            outcome,
        )

    def as_record(self, item: ObjectInfo) -> dict[str, Any]:
        """The fields of the record this marker stands for that the skip rule reads."""
        failed = self.outcome != "ok"
        return {
            "source_key": item.key,
            "status": "failed" if failed else "ok",
            "error_code": self.outcome if failed and self.outcome != "failed" else None,
            "fingerprint": self.fingerprint,
            # the listed ETag where the marker names it, else one it can never equal
            "source_etag": item.etag if etag_token(item.etag) == self.etag else object(),
        }


def marker_key(record: dict[str, Any], record_digest: str) -> str | None:
    where = folder(record["source_key"])
    return None if where is None else where + Marker.of(record, record_digest).name


@dataclass(frozen=True)
class Stored:
    """A record as read or written: its fields, and the digest of its bytes."""

    record: dict[str, Any]
    digest: str

    @property
    def marker_key(self) -> str | None:
        return marker_key(self.record, self.digest)


def read(store: Store, key: str) -> Stored | None:
    """The record at ``key`` (None if there is none)."""
    try:
        data, _ = store.get(key)
    except FileNotFoundError:
        return None
    return Stored(json.loads(data), digest(data))


def begin(dst: Store, source_key: str, *, old: Stored | None, new_key: str | None) -> str | None:
    """Before a record is (re)written: put an intent, then the replaced record's tombstone (its
    marker may be folded into a segment, which only compaction rewrites), and delete its marker.

    Returns the intent's key, for :func:`end` (None where the source has no index folder).
    """
    where = folder(source_key)
    if where is None:
        return None
    intent = f"{where}~{uuid.uuid4().hex}"
    dst.put(intent, b"")
    old_key = old.marker_key if old else None
    if old_key and old_key != new_key:
        dst.put(where + _DEAD + old_key[len(where) :], b"")
        dst.delete([old_key])
    return intent


def end(dst: Store, intent: str | None, *, new_key: str | None) -> None:
    """After the record is written: its marker (``new_key``; None if not written), then the
    intent goes."""
    if new_key:
        dst.put(new_key, b"")
    if intent:
        dst.delete([intent])


def repair(dst: Store, stored: Stored) -> None:
    """Put the marker of a record found current (a crash, or outputs older than the index).

    Safe at any time: a marker that is no longer current only makes its source unsure.
    """
    key = stored.marker_key
    if key:
        dst.put(key, b"")


@dataclass
class Group:
    """One source's markers in the index, the names of those its tombstones rule out, and
    whether anything else is there."""

    source: str
    markers: list[Marker] = field(default_factory=list)
    other: bool = False  # an intent, or a name this version does not know
    dead: set[str] = field(default_factory=set)  # marker names of replaced records

    @property
    def current(self) -> Marker | None:
        """The current record's marker when certain (one live marker, nothing else), else None."""
        if self.other:
            return None
        if not self.dead:  # the common case: no tombstone, no marker names to build
            return self.markers[0] if len(self.markers) == 1 else None
        live = [m for m in self.markers if m.name not in self.dead]
        return live[0] if len(live) == 1 else None


def listed(store: Store, *, page_size: int = 1000) -> Iterator[tuple[str, str, str]]:
    """(source, the object's name in its folder, the object's key) for each object in the
    index's folders, in listing order."""
    cut = len(INDEX)
    for key in store.keys(under=INDEX, page_size=page_size):
        enc, sep, name = key[cut:].partition(_END + "/")
        if not sep or "/" in name:
            continue  # not a marker (a segment, a source folder named like the index)
        yield decode(enc), name, key


def groups(store: Store, *, page_size: int = 1000) -> Iterator[Group]:
    """The index's folders in listing order, one :class:`Group` per source."""
    for source, found in itertools.groupby(listed(store, page_size=page_size), key=itemgetter(0)):
        yield _group(source, (parse_name(name) for _, name, _ in found))


def parse_name(name: str) -> tuple[Marker | None, bool]:
    """(the marker a folder's object names, whether it is a tombstone of that marker); None for
    an intent or a name this version does not know."""
    dead = name.startswith(_DEAD)
    return Marker.parse(name[1:] if dead else name), dead


def _group(source: str, parsed: Iterable[tuple[Marker | None, bool]]) -> Group:
    """A source's group from its objects' names as :func:`parse_name` gives them."""
    group = Group(source)
    for marker, dead in parsed:
        if marker is None:
            group.other = True  # an intent (~uuid), or unknown: the record is read
        elif dead:
            group.dead.add(marker.name)
        elif marker not in group.markers:
            group.markers.append(marker)
    return group


# -- segments: markers folded by compaction --------------------------------------------------


def segment_keys(store: Store, *, page_size: int = 1000) -> list[str]:
    """The segments there are now (one per compaction since the last that replaced them)."""
    cut = len(SEGMENTS)
    found = store.keys(under=SEGMENTS, page_size=page_size)
    return sorted(k for k in found if _SEGMENT_NAME.fullmatch(k[cut:]))


def segment_key() -> str:
    return f"{SEGMENTS}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex}.tsv.gz"


def write_segment(path: str | os.PathLike, entries: Iterable[tuple[str, Marker]]) -> int:
    """Write one segment at ``path``: a line per ``(source, marker)`` (sources in byte order,
    each once), gzip'd; how many lines."""
    last, n = "", 0
    with gzip.open(path, "wt", encoding="utf-8", newline="\n") as f:
        for source, marker in entries:
            enc = encode(source)
            if enc is None:
                continue  # no marker fits: never skipped without a read
            if enc <= last:
                raise ValueError(f"segment lines out of order: {enc!r} after {last!r}")
            f.write(f"{enc}\t{marker.name}\n")
            last, n = enc, n + 1
    return n


def _segment_entries(raw: BinaryIO) -> Iterator[tuple[str, Marker | None]]:
    """(escaped source, its marker; None for a name this version does not know) per line."""
    with raw, gzip.open(raw, "rt", encoding="utf-8", newline="\n") as lines:
        for line in lines:
            enc, _, name = line.rstrip("\n").partition("\t")
            yield enc, Marker.parse(name)


def folded(store: Store, keys: list[str], *, missing_ok: bool = False) -> Iterator[Group]:
    """The segments' markers, one :class:`Group` per source in byte order of sources.

    The segments are requested at the first group (FileNotFoundError if one has gone, unless
    ``missing_ok``) and read as the groups are consumed: constant memory for any number of
    sources.
    """
    streams = []
    for key in keys:
        try:
            streams.append(_segment_entries(store.stream(key)))
        except FileNotFoundError:
            if not missing_ok:
                raise
    # One segment is the state compaction leaves: sources in order, each once, so a group per
    # line (a source twice, in a segment no compaction wrote, is made unsure by Lookup).
    if len(streams) == 1:
        for enc, marker in streams[0]:
            yield Group(decode(enc), [marker]) if marker else Group(decode(enc), other=True)
        return
    # a segment holds markers only (no tombstones): any other name is one this version does
    # not know
    merged = heapq.merge(*streams, key=itemgetter(0))
    for enc, found in itertools.groupby(merged, key=itemgetter(0)):
        yield _group(decode(enc), ((marker, False) for _, marker in found))


def _before_in_both(a: str, b: str) -> bool:
    """``a`` lists before ``b`` in byte order and in folder-by-folder order."""
    return a < b and a.split("/") < b.split("/")


class Lookup:
    """Finds each listed source's index group, reading the index listing alongside.

    Sources must be asked for in their listing's order.  The listing may be in S3's byte order
    or a directory walk's folder order (they differ where a name continues with a character
    below ``/``): the index is read ahead while its next source is not after the asked one in
    both orders, and a group is dropped only once it is before the asked source in both.  A
    source is matched by equality only, so any disagreement costs work, never a wrong skip;
    ``ahead`` bounds what is held (past it a source is answered with an unsure group: a read).
    With ``start``, groups before it in both orders are passed over.
    """

    def __init__(self, groups: Iterator[Group], *, ahead: int = 20_000, start: str | None = None):
        if start is not None:
            groups = itertools.dropwhile(lambda g: _before_in_both(g.source, start), groups)
        self._groups = groups
        self._head = next(groups, None)
        self._held: dict[str, Group] = {}
        self._ahead = ahead

    def find(self, source: str) -> Group | None:
        head = self._head
        if head is None and not self._held:
            return None  # the index is read to its end (a first run: it is empty)
        if head is not None and head.source == source and not self._held and self._ahead:
            # the usual case, the loop below's first step without its bookkeeping: the next
            # group is the source's, and it is answered when the group after is past it
            self._head = next(self._groups, None)
            if self._head is None or _before_in_both(source, self._head.source):
                return head
            self._held[source] = head
        while (
            self._head is not None
            and not _before_in_both(source, self._head.source)
            and len(self._held) < self._ahead
        ):
            g = self._head
            if g.source in self._held:  # the same source twice: make it unsure
                self._held[g.source].other = True
            else:
                self._held[g.source] = g
            self._head = next(self._groups, None)
        found = self._held.pop(source, None)
        head = self._head
        if found is None and head is not None and not _before_in_both(source, head.source):
            found = Group(source, other=True)  # not read far enough to know: unsure
        while self._held and _before_in_both(next(iter(self._held)), source):
            del self._held[next(iter(self._held))]
        if len(self._held) > self._ahead // 2:
            self._held = {k: g for k, g in self._held.items() if not _before_in_both(k, source)}
        return found


class View:
    """What the index says of each source, asked in listing order: the markers in its folder
    and those folded into segments, as one :class:`Group` (None: neither has any).

    A compaction moves markers from folders into a new segment: a view whose segments were
    listed before it could miss a marker in both places.  :meth:`unchanged` says whether the
    segments are still those the view reads; decisions are safe from groups found before it
    answered True, and a new view (``start``: the first source still to decide) follows a False.
    """

    def __init__(self, store: Store, *, page_size: int = 1000, start: str | None = None):
        self._store, self._page_size = store, page_size
        self.segments = segment_keys(store, page_size=page_size)  # before the folders are listed
        self._folded = Lookup(folded(store, self.segments), start=start)
        self._folders = Lookup(groups(store, page_size=page_size), start=start)

    def find(self, source: str) -> Group | None:
        a, b = self._folders.find(source), self._folded.find(source)
        if a is None or b is None:
            return a or b
        markers = [*a.markers, *(m for m in b.markers if m not in a.markers)]
        return Group(source, markers, a.other or b.other, a.dead | b.dead)

    def unchanged(self) -> bool:
        return segment_keys(self._store, page_size=self._page_size) == self.segments
