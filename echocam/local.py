"""Local mode: explain a file, a directory or an S3 prefix in this process, with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from tqdm import tqdm

from echocam import manifest, runs
from echocam.chunking import chunked
from echocam.model import LoadedModel, load_model
from echocam.pipeline import Explainer
from echocam.runner import run_chunks
from echocam.settings import Params, Settings, params_for_model
from echocam.storage import client_factory, open_store


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
    source: str,
    dest: str,
    *,
    params: Params,
    settings: Settings,
    force: bool = False,
    progress: bool = True,
    explicit: Collection[str] | None = None,
) -> dict[str, Any]:
    """Explain every audio object under ``source`` into ``dest``; returns the run's summary.

    A trained checkpoint's model-input parameters replace those of ``params`` not named in
    ``explicit`` (None: all are; see ``echocam.settings.params_for_model``).
    """
    set_threads(settings.threads)
    model = load(settings)
    params = params_for_model(params, model.params, explicit=explicit)
    src = open_store(source, client_factory=client_factory(settings))
    dst = open_store(dest, client_factory=client_factory(settings))
    run = runs.describe(
        model=model.identity, params=params, input_uri=src.uri, output_uri=dst.uri, mode="local"
    )
    runs.save(dst, run)
    items = list(src.list(suffixes=settings.extensions, page_size=settings.page_size))
    with (
        ThreadPoolExecutor(settings.io_threads) as pool,
        tqdm(total=len(items), unit="rec", disable=not progress, desc="echocam run") as bar,
    ):
        explainer = Explainer.from_settings(model, params, settings, pool=pool)
        run_chunks(
            chunked(items, settings.task_size),
            src=src,
            dst=dst,
            explainer=explainer,
            run_id=run["run_id"],
            force=force,
            pool=pool,
            on_chunk=lambda done: bar.update(len(done)),
        )
    return manifest.compact(dst, page_size=settings.page_size)
