"""Which recordings a run does: list the source and the done index, apply the one rule.

``echocam produce`` enqueues what :func:`plan` says needs work, ``echocam run`` explains it, and
both print it with ``--dry-run``.  The source listing is merged with the output's done index
(``echocam.bucket.index``: the listing of its folders, and the segments compaction folded markers
into), which says for each source what its current record answers (ETag, fingerprint, status or
error code) without reading it; a record is read only where the index is unsure of it, or where a
missing record would skip the recording (``--retry-failed``).  Streamed page by page: constant
memory for any bucket, and the first decisions come before the listings end.  No torch here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from echocam.bucket import index, protocol, runs
from echocam.bucket.chunking import chunked_ahead
from echocam.bucket.protocol import RESUME, Redo
from echocam.bucket.records import record_key
from echocam.bucket.storage import ObjectInfo, Store, read_json, suffix_matches
from echocam.settings import Params, Settings


def _look_up(
    dst: Store,
    view: index.View | Future | None,
    items: list[ObjectInfo],
    *,
    page_size: int,
    pool: ThreadPoolExecutor,
) -> tuple[index.View | None, list[index.Group | None], Future | None]:
    """The index's group of each item, and (a future) whether the view's segments were still
    the current ones after the groups were found: if not, a compaction moved markers meanwhile,
    and the items are looked up again from a new view.  Asked on ``pool``, so that the request
    overlaps the decisions made from the groups, which wait for it before they are used.

    ``view`` may be one still being opened (a future): its listings started with the sources'.
    """
    while items:
        try:
            if isinstance(view, Future):
                view = view.result()
            view = view or index.View(dst, page_size=page_size, start=items[0].key)
        except FileNotFoundError:  # a segment went between its listing and its request
            view = None
            continue
        found = [view.find(it.key) for it in items]
        return view, found, pool.submit(view.unchanged)
    return view, [], None


def _records(
    items: list[ObjectInfo], groups: list[index.Group | None], *, dst: Store, redo: Redo, pool
) -> dict[str, dict[str, Any] | None]:
    """What the skip rule needs of each item's current record (None: it has none)."""
    known: dict[str, dict[str, Any] | None] = {}
    unsure = []
    for it, group in zip(items, groups, strict=True):
        if group is not None and (current := group.current) is not None:
            known[it.key] = current.as_record(it)
        elif group is None and not redo.failed:
            known[it.key] = None  # no record, or one unseen: the worker reads it before any work
        else:
            unsure.append(it)
    found = pool.map(lambda it: read_json(dst, record_key(it.key)), unsure)
    known.update(zip((it.key for it in unsure), found, strict=True))
    return known


#: Chunks of the source listing read ahead of the decisions (a few MB at most).
LIST_AHEAD = 4


class Decision(NamedTuple):
    """One listed object, and why the run skips it (``reason`` None: it needs work)."""

    item: ObjectInfo
    reason: str | None

    @property
    def todo(self) -> bool:
        return self.reason is None


def plan(
    src: Store,
    dst: Store,
    *,
    extensions: tuple[str, ...],
    fingerprint: str,
    run_id: str,
    redo: Redo = RESUME,
    pool: ThreadPoolExecutor,
    chunk: int = 64,
    page_size: int = 1000,
    limit: int | None = None,
    report_extension: bool = False,
    max_bytes: int | None = None,
) -> Iterator[Decision]:
    """A :class:`Decision` for each audio object under ``src``, in listing order.

    Decided ``chunk`` at a time (records read on ``pool``).  With ``limit``, stops after that many
    recordings that need work.  With ``report_extension``, objects whose extension is not in
    ``extensions`` are listed too, as skipped (``--dry-run``).  A local listing reads neither
    those nor recordings above ``max_bytes`` (they fail ``too_large`` unread).
    """
    if limit is not None and limit <= 0:
        return
    suffixes = () if report_extension else extensions

    def read(key: str, size: int) -> bool:
        return (max_bytes is None or size <= max_bytes) and suffix_matches(key, extensions)

    listing = src.list(suffixes=suffixes, page_size=page_size, read=read)
    needs_records = protocol.needs_records(redo)
    # The index is opened (its first listing page can be slow: SeaweedFS walks its empty
    # folders) while the sources list, and they list up to LIST_AHEAD chunks ahead meanwhile.
    view = pool.submit(index.View, dst, page_size=page_size) if needs_records else None
    todo = 0
    for items in chunked_ahead(listing, max(1, chunk), depth=LIST_AHEAD):
        is_audio = [suffix_matches(it.key, extensions) for it in items]  # once per item
        audio = list(itertools.compress(items, is_audio))
        while True:
            if needs_records:
                view, groups, unchanged = _look_up(dst, view, audio, page_size=page_size, pool=pool)
                existing = _records(audio, groups, dst=dst, redo=redo, pool=pool)
            else:
                existing, unchanged = {}, None
            reasons = [
                protocol.skip_reason(
                    existing.get(it.key), it, fingerprint=fingerprint, run_id=run_id, redo=redo
                )
                if matches
                else protocol.EXTENSION
                for it, matches in zip(items, is_audio, strict=True)
            ]
            if unchanged is None or unchanged.result():
                break
            view = None  # a compaction moved markers since the view was opened: look again
        for it, reason in zip(items, reasons, strict=True):
            yield Decision(it, reason)
            if reason is None:
                todo += 1
                if todo == limit:
                    return


def for_run(
    src: Store,
    dst: Store,
    run: dict[str, Any],
    *,
    settings: Settings,
    redo: Redo = RESUME,
    pool: ThreadPoolExecutor,
    chunk: int,
    limit: int | None = None,
    report_extension: bool = False,
) -> Iterator[Decision]:
    """:func:`plan` for ``run`` (its run.json) with the listing ``settings``."""
    return plan(
        src,
        dst,
        extensions=settings.extensions,
        fingerprint=run["fingerprint"],
        run_id=run["run_id"],
        redo=redo,
        pool=pool,
        chunk=chunk,
        page_size=settings.page_size,
        limit=limit,
        report_extension=report_extension,
        max_bytes=run["params"]["max_bytes"],
    )


def dry_run(
    src: Store,
    dst: Store,
    *,
    model: dict[str, Any],
    params: Params,
    settings: Settings,
    redo: Redo = RESUME,
    limit: int | None = None,
    chunk: int = 64,
) -> Iterator[Decision]:
    """What a run of ``model`` with ``params`` would do and skip (and why), writing nothing.

    Every listed object is reported, other extensions included (``--dry-run``).
    """
    run = runs.describe(
        model=model,
        params=params,
        input_uri=src.uri,
        output_uri=dst.uri,
        mode="dry-run",
        redo=redo,
    )
    with ThreadPoolExecutor(settings.io_threads) as pool:
        yield from for_run(
            src,
            dst,
            run,
            settings=settings,
            redo=redo,
            pool=pool,
            chunk=chunk,
            limit=limit,
            report_extension=True,
        )
