"""Local mode: explain a file, a directory or an S3 prefix in this process, with a progress bar."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from tqdm import tqdm

from echocam import manifest, runs
from echocam.batch import run_batch
from echocam.chunking import batched
from echocam.model import LoadedModel, load_model
from echocam.pipeline import Explainer
from echocam.protocol import RESUME, Redo
from echocam.settings import Params, Settings
from echocam.storage import client_factory, open_store


def load(settings: Settings) -> LoadedModel:
    """The model ``settings.weights`` names; checkpoints may live in S3."""

    def read_bytes(uri: str) -> bytes:
        from echocam.storage import S3Store

        store = S3Store(uri.rsplit("/", 1)[0], client_factory(settings)())
        return store.get(uri.rsplit("/", 1)[1])[0]

    return load_model(settings.weights, seed=settings.seed, read_bytes=read_bytes)


def set_threads(threads: int, *, processes: int = 1) -> int:
    """torch intra-op threads: ``threads`` or cores / processes (oversubscription is 3x slower)."""
    n = threads or max(1, (os.cpu_count() or 1) // processes)
    torch.set_num_threads(n)
    return n


def run_local(
    source: str,
    dest: str,
    *,
    params: Params,
    settings: Settings,
    redo: Redo = RESUME,
    progress: bool = True,
) -> dict[str, Any]:
    """Explain every audio object under ``source`` into ``dest``; returns the run's summary."""
    set_threads(settings.threads)
    model = load(settings)
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
        run_batch(
            batched(items, settings.task_size),
            src=src,
            dst=dst,
            explainer=explainer,
            run_id=run["run_id"],
            redo=redo,
            pool=pool,
            on_chunk=lambda done: bar.update(len(done)),
        )
    return manifest.compact(dst, page_size=settings.page_size)
