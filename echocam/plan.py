"""Which recordings a run does: list the source, read each record, apply the one rule.

``echocam produce`` enqueues what :func:`plan` says needs work, ``echocam run`` explains it, and
both print it with ``--dry-run``.  Streamed page by page: constant memory for any bucket, and the
first decisions come before the listing ends.  No torch here.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from echocam import protocol, runs
from echocam.chunking import chunked
from echocam.protocol import RESUME, Redo
from echocam.records import record_key
from echocam.settings import Params, Settings
from echocam.storage import ObjectInfo, Store, read_json, suffix_matches


@dataclass(frozen=True)
class Decision:
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
) -> Iterator[Decision]:
    """A :class:`Decision` for each audio object under ``src``, in listing order.

    Records are read ``chunk`` at a time on ``pool``.  With ``limit``, stops after that many
    recordings that need work.  With ``report_extension``, objects whose extension is not in
    ``extensions`` are listed too, as skipped (``--dry-run``; a local listing then reads them).
    """
    if limit is not None and limit <= 0:
        return
    suffixes = () if report_extension else extensions
    listing = src.list(suffixes=suffixes, page_size=page_size)
    todo = 0
    for items in chunked(listing, max(1, chunk)):
        audio = [it for it in items if suffix_matches(it.key, extensions)]
        if protocol.needs_records(redo):
            found = pool.map(lambda it: read_json(dst, record_key(it.key)), audio)
            existing = dict(zip((it.key for it in audio), found, strict=True))
        else:
            existing = {}
        for it in items:
            if not suffix_matches(it.key, extensions):
                yield Decision(it, protocol.EXTENSION)
                continue
            reason = protocol.skip_reason(
                existing.get(it.key), it, fingerprint=fingerprint, run_id=run_id, redo=redo
            )
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
        model=model, params=params, input_uri=src.uri, output_uri=dst.uri, mode="dry-run"
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
