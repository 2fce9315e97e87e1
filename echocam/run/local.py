"""Local mode: explain a file, a directory or an S3 prefix in this process, with a progress bar."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from echocam.bucket import manifest, plan, runs
from echocam.bucket.chunking import chunked
from echocam.bucket.plan import Decision
from echocam.bucket.protocol import RESUME, Redo
from echocam.bucket.storage import ObjectInfo, Store, client_factory, open_store
from echocam.explain.device import set_threads
from echocam.explain.model import load_model_from
from echocam.explain.pipeline import Explainer
from echocam.run import heap
from echocam.run.runner import run_chunks
from echocam.settings import Params, Settings, params_for_model


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
    model = load_model_from(settings)
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
        redo=redo,
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
                chunk=settings.chunk_size,
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
            chunked(todo(), settings.chunk_size),
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
    model = load_model_from(settings)
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
        chunk=settings.chunk_size,
    )


def _stores(source: str | Store, dest: str | Store, settings: Settings) -> tuple[Store, Store]:
    """Stores for paths or URIs (a store given is used as is)."""
    make = client_factory(settings)
    return tuple(
        open_store(x, client_factory=make) if isinstance(x, str) else x for x in (source, dest)
    )
