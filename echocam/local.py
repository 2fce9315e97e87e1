"""Local mode: explain a file, a directory or an S3 prefix in this process, with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from tqdm import tqdm

from echocam import heap, manifest, plan, runs
from echocam.chunking import chunked
from echocam.model import LoadedModel, load_model
from echocam.pipeline import Explainer
from echocam.plan import Decision
from echocam.protocol import RESUME, Redo
from echocam.runner import run_chunks
from echocam.settings import Params, Settings, params_for_model
from echocam.storage import ObjectInfo, Store, client_factory, open_store


def load(settings: Settings) -> LoadedModel:
    """The model ``settings.weights`` names; checkpoints may live in S3."""

    def read_bytes(uri: str) -> bytes:
        from echocam.storage import S3Store

        store = S3Store(uri.rsplit("/", 1)[0], client_factory(settings)())
        return store.get(uri.rsplit("/", 1)[1])[0]

    return load_model(settings.weights, seed=settings.seed, read_bytes=read_bytes)


def set_threads(threads: int, *, processes: int = 1) -> int:
    """torch intra-op threads: ``threads``, or cores / processes (more than cores oversubscribe)."""
    n = threads or max(1, (os.cpu_count() or 1) // processes)
    torch.set_num_threads(n)
    return n


def run_local(
    source: str | Store,
    dest: str | Store,
    *,
    params: Params,
    settings: Settings,
    redo: Redo = RESUME,
    limit: int | None = None,
    progress: bool = True,
    explicit: Collection[str] | None = None,
) -> dict[str, Any]:
    """Explain the audio objects under ``source`` into ``dest``; returns the run's summary.

    ``source`` and ``dest`` are paths, ``s3://`` URIs or stores.  The listing is streamed:
    work starts with the first chunk, and the progress bar's total grows while the listing goes
    on.  ``redo`` says what to redo although done (``--force``, ``--retry-failed``); with
    ``limit``, at most that many recordings that need work.  A trained checkpoint's model-input
    parameters replace those of ``params`` not named in ``explicit`` (None: all are; see
    ``echocam.settings.params_for_model``).
    """
    set_threads(settings.threads)
    heap.return_large_blocks()
    model = load(settings)
    params = params_for_model(params, model.params, explicit=explicit)
    params.class_ids(model.class_names)  # the model can answer them, or stop before run.json
    src, dst = _stores(source, dest, settings)
    run = runs.describe(
        model=model.identity,
        params=params,
        input_uri=src.uri,
        output_uri=dst.uri,
        mode="local",
        class_names=model.class_names,
    )
    runs.save(dst, run)
    with (
        ThreadPoolExecutor(settings.io_threads) as pool,
        tqdm(total=0, unit="rec", disable=not progress, desc="echocam run") as bar,
    ):
        skipped = 0

        def todo() -> Iterator[ObjectInfo]:
            nonlocal skipped
            # Records are read a task's worth at a time: the first batch starts after that many.
            decisions = plan.for_run(
                src,
                dst,
                run,
                settings=settings,
                redo=redo,
                pool=pool,
                chunk=settings.task_size,
                limit=limit,
            )
            for d in decisions:
                bar.total += 1
                if d.todo:
                    yield d.item
                else:
                    skipped += 1
                    bar.set_postfix(skipped=skipped, refresh=False)
                    bar.update()
            bar.refresh()

        explainer = Explainer.from_settings(model, params, settings, pool=pool)
        run_chunks(
            chunked(todo(), settings.task_size),
            src=src,
            dst=dst,
            explainer=explainer,
            run_id=run["run_id"],
            redo=redo,
            pool=pool,
            on_chunk=lambda done: bar.update(len(done)),
        )
    return manifest.compact(dst, page_size=settings.page_size)


def dry_run(
    source: str | Store,
    dest: str | Store,
    *,
    params: Params,
    settings: Settings,
    redo: Redo = RESUME,
    limit: int | None = None,
    explicit: Collection[str] | None = None,
) -> Iterator[Decision]:
    """What :func:`run_local` would explain and skip (and why), writing nothing anywhere.

    The model is loaded (its sha256 enters the fingerprint that says what is done).
    """
    model = load(settings)
    params = params_for_model(params, model.params, explicit=explicit)
    params.class_ids(model.class_names)
    src, dst = _stores(source, dest, settings)
    yield from plan.dry_run(
        src,
        dst,
        model=model.identity,
        params=params,
        settings=settings,
        redo=redo,
        limit=limit,
        chunk=settings.task_size,
    )


def _stores(source: str | Store, dest: str | Store, settings: Settings) -> tuple[Store, Store]:
    """Stores for paths or URIs (a store given is used as is)."""
    make = client_factory(settings)
    return tuple(
        open_store(x, client_factory=make) if isinstance(x, str) else x for x in (source, dest)
    )
