"""Run chunks of source objects from one store into another: the unit of work.

Words: an *item* is one source object, a *chunk* the items that go through the stages together
(local mode: ``--chunk-size`` items; a worker task: half of its items), a *batch* the windows of
one forward pass and a *block* the batches that go through compute and finish together
(``pipeline``).  ``echocam run`` (local mode) and the Celery task both call
:func:`run_chunks`, so both write the same outputs and records.  Outputs are written first and
the record last: a record's presence means the recording's outputs are complete.  Around the
record, its marker in the done index (``echocam.bucket.index``); after each chunk, its manifest
shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from echocam.bucket import embeddings, index, manifest, records
from echocam.bucket.index import Stored
from echocam.bucket.protocol import RESUME, Redo, is_done
from echocam.bucket.records import Record
from echocam.bucket.storage import ObjectInfo, Store
from echocam.errors import DownloadFailed, EchoCamError
from echocam.explain.encoder import Result
from echocam.explain.pipeline import Computed, Decoded, Explainer, Source


@dataclass
class Outcome:
    """What became of one source: its record's status, and whether this call wrote it."""

    key: str
    status: str  # "ok" | "failed"
    error_code: str | None
    windows: int
    written: bool
    timings_s: dict[str, float]  # decode, compute, encode (empty unless written now)

    @classmethod
    def of(cls, record: Record, *, written: bool) -> Outcome:
        return cls(
            record["source_key"],
            record["status"],
            record.get("error_code"),
            record.get("n_windows") or 0,
            written,
            (record.get("timings_s") or {}) if written else {},
        )


def fetch(src: Store, item: ObjectInfo, *, max_bytes: int) -> Source:
    """Read one source; failures become the source's error (download_failed after retries)."""
    try:
        data, info = src.get(item.key, max_bytes=max_bytes)
        return Source(item.key, data, info.size, info.etag or item.etag)
    except EchoCamError as e:
        return Source(item.key, size=item.size, etag=item.etag, error=e)
    except Exception as e:  # S3 errors left after botocore's retries, vanished files
        err = DownloadFailed(f"cannot read source: {type(e).__name__}: {e}")
        return Source(item.key, size=item.size, etag=item.etag, error=err)


def _pending(
    items: Sequence[ObjectInfo],
    *,
    dst: Store,
    fingerprint: str,
    run_id: str,
    redo: Redo,
    pool: ThreadPoolExecutor,
) -> tuple[dict[str, Outcome], list[Stored], list[tuple[ObjectInfo, Stored | None]]]:
    """Outcomes of the items already done (and their records), and the (item, old record)
    pairs still to do."""
    existing = list(pool.map(lambda it: index.read(dst, records.record_key(it.key)), items))
    done, current, todo = {}, [], []
    for it, stored in zip(items, existing, strict=True):
        record = stored.record if stored else None
        if is_done(record, it, fingerprint=fingerprint, run_id=run_id, redo=redo):
            done[it.key] = Outcome.of(record, written=False)
            current.append(stored)
        else:
            todo.append((it, stored))
    return done, current, todo


def _write(
    dst: Store, result: Result, *, run_id: str, old: Stored | None
) -> tuple[Outcome, Stored | None]:
    """Outputs first, record last; a new record only if absent (a twin delivery may have won).

    The done index is kept around it (``echocam.bucket.index``): an intent before, the replaced
    record's marker deleted, the new marker after the record, then the intent deleted.
    Returns the outcome and, if this call wrote it, the record as stored.
    """
    record = records.stamped(result.record, run_id=run_id)
    data = records.dumps(record)
    stored = Stored(record, index.digest(data))
    intent = index.begin(dst, record["source_key"], old=old, new_key=stored.marker_key)
    for key, body in result.files.items():
        dst.put(key, body)
    written = dst.put(record["record_key"], data, if_absent=old is None)
    index.end(dst, intent, new_key=stored.marker_key if written else None)
    return Outcome.of(record, written=written), stored if written else None


@dataclass
class Prepared:
    """A chunk after its first stage: outcomes of the done items, the others decoded."""

    items: Sequence[ObjectInfo]
    outcomes: dict[str, Outcome]
    current: list[Stored]  # the records of the done items
    decoded: Decoded | None  # the sources still to explain (None: nothing to do)
    old: dict[str, Stored | None]  # key → its record now (overwritten; None: created)


def prepare(
    items: Sequence[ObjectInfo],
    *,
    src: Store,
    dst: Store,
    explainer: Explainer,
    run_id: str,
    redo: Redo = RESUME,
    pool: ThreadPoolExecutor,
) -> Prepared:
    """Check which items are done, read the others' bytes and decode them, on ``pool``."""
    outcomes, current, todo = _pending(
        items, dst=dst, fingerprint=explainer.fingerprint, run_id=run_id, redo=redo, pool=pool
    )
    max_bytes = explainer.params.max_bytes
    sources = list(pool.map(lambda t: fetch(src, t[0], max_bytes=max_bytes), todo))
    decoded = explainer.decode(sources) if sources else None
    return Prepared(items, outcomes, current, decoded, {it.key: old for it, old in todo})


def complete(
    prepared: Prepared,
    computed: Computed | None,
    *,
    dst: Store,
    explainer: Explainer,
    run_id: str,
    pool: ThreadPoolExecutor,
) -> list[Outcome] | None:
    """Encode a computed block; after the chunk's last, write outputs, then records, and
    return one outcome per item (None before).  Then the chunk's manifest shard: the records
    written, and those found done.
    """
    outcomes = dict(prepared.outcomes)
    shard = list(prepared.current)
    vectors: dict[str, pa.Table] = {}  # record digest → the embeddings just written
    if computed is not None:
        results = explainer.finish(computed)
        if not computed.last:
            return None

        def write(result: Result) -> tuple[Outcome, Stored | None, pa.Table | None]:
            try:
                out, stored = _write(
                    dst, result, run_id=run_id, old=prepared.old[result.record["source_key"]]
                )
                return out, stored, result.embeddings
            finally:
                result.close()

        for out, stored, table in pool.map(write, results):
            outcomes[out.key] = out
            if stored is not None:
                shard.append(stored)
                if table is not None:
                    vectors[stored.digest] = table
    _index_chunk(dst, prepared.current, shard, vectors=vectors, pool=pool)
    return [outcomes[it.key] for it in prepared.items]


def _index_chunk(
    dst: Store,
    current: list[Stored],
    shard: list[Stored],
    *,
    vectors: dict[str, pa.Table] | None = None,
    pool,
) -> None:
    """Put again the markers of the records found done (a crash, or outputs older than the
    index, may have left them without), then the chunk's manifest and embeddings shards
    (``vectors``: the embeddings written now; those of the records found done are read)."""
    list(pool.map(lambda st: index.repair(dst, st), current))
    manifest.write_shard(dst, shard)

    vectors = vectors or {}

    def table(st: Stored) -> tuple[str, pa.Table] | None:
        if st.digest in vectors:
            return st.digest, vectors[st.digest]
        key = (st.record.get("outputs") or {}).get("embeddings")
        try:
            return (st.digest, embeddings.read(dst, key)) if key else None
        except FileNotFoundError:
            return None  # replaced since: its successor's chunk puts it in a shard

    embeddings.write_shard(dst, [got for got in pool.map(table, shard) if got is not None])


def run_chunks(
    chunks: Iterable[Sequence[ObjectInfo]],
    *,
    src: Store,
    dst: Store,
    explainer: Explainer,
    run_id: str,
    redo: Redo = RESUME,
    pool: ThreadPoolExecutor,
    on_chunk: Callable[[list[Outcome]], None] | None = None,
) -> list[Outcome]:
    """Explain the items of ``chunks`` from ``src`` into ``dst``; one outcome per item, in order.

    Done items are skipped; bad input becomes a failed record.  Three chunks are in flight:
    while the device computes chunk N (in this thread), chunk N+1 is read and decoded and
    chunk N-1 encoded and written, each by its own thread using ``pool``.  Within a chunk the
    device and the encoding take turns a block at a time: block S+1 computes while S is
    encoded, so a long recording's windows are never all in memory.  Errors writing to
    ``dst`` raise (the caller retries, and the recordings finished before are then skipped).
    """
    common = dict(src=src, dst=dst, explainer=explainer, run_id=run_id, redo=redo, pool=pool)
    chunks = iter(chunks)
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="echocam-prefetch")
    finisher = ThreadPoolExecutor(1, thread_name_prefix="echocam-finish")
    outcomes: list[Outcome] = []
    finishing: Future[list[Outcome]] | None = None

    def collect(future: Future[list[Outcome] | None]) -> None:
        done = future.result()
        if done is None:  # a block before its chunk's last
            return
        outcomes.extend(done)
        if on_chunk:
            on_chunk(done)

    try:
        ahead = prefetch.submit(prepare, next(chunks, []), **common)
        while (prepared := ahead.result()).items:
            ahead = prefetch.submit(prepare, next(chunks, []), **common)
            blocks = explainer.compute(prepared.decoded) if prepared.decoded else [None]
            for computed in blocks:
                if finishing is not None:
                    collect(finishing)  # bounded: one block finishing while the next computes
                finishing = finisher.submit(
                    complete,
                    prepared,
                    computed,
                    dst=dst,
                    explainer=explainer,
                    run_id=run_id,
                    pool=pool,
                )
        if finishing is not None:
            collect(finishing)
    finally:
        # A time limit may interrupt us: never wait here on a read that hangs.  But let the
        # chunk being written finish, so that no failure record races its real one.
        prefetch.shutdown(wait=False, cancel_futures=True)
        finisher.shutdown(wait=True)
    return outcomes


def record_failures(
    items: Sequence[ObjectInfo],
    *,
    dst: Store,
    model: dict,
    fingerprint: str,
    run_id: str,
    code: str,
    message: str,
) -> list[Outcome]:
    """Write failed records with ``code`` for the items not done yet (timeouts, poison tasks).

    ``model`` is the identity of the model the records name, ``fingerprint`` the run's as this
    worker computes it: no explainer is needed (it may be what could not be built).
    """
    outcomes, current, todo = _pending(
        items,
        dst=dst,
        fingerprint=fingerprint,
        run_id=run_id,
        redo=RESUME,  # a current record stays, even under --force: a timeout never replaces it
        pool=_SERIAL,
    )
    shard = list(current)
    for it, old in todo:
        base = records.new(
            source_key=it.key, size=it.size, etag=it.etag, model=model, fingerprint=fingerprint
        )
        res = Result(records.failed(base, code=code, message=message))
        outcomes[it.key], stored = _write(dst, res, run_id=run_id, old=old)
        if stored is not None:
            shard.append(stored)
    _index_chunk(dst, current, shard, pool=_SERIAL)
    return [outcomes[it.key] for it in items]


class _Serial:
    """``map`` in the calling thread: used where a pool's threads may be the ones stuck."""

    @staticmethod
    def map(fn, items):
        return map(fn, items)


_SERIAL = _Serial()
