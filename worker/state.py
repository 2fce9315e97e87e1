"""Per-process worker state.

The model is loaded once in the worker's main process (on the CPU, before the fork: a load
failure stops the worker there, loudly); each pool process then builds its explainer on its
device after the fork, so CUDA is never initialised in the parent.
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import soundfile as sf

from echocam.bucket import progress
from echocam.bucket.storage import S3Store, client_factory, open_store, without_obstore
from echocam.explain.device import set_threads
from echocam.explain.model import LoadedModel, load_model_from
from echocam.explain.pipeline import Explainer, Source
from echocam.run import heap
from echocam.settings import Params
from worker.app import settings

log = logging.getLogger(__name__)

model: LoadedModel | None = None
processes = 1


def load_model_in_parent(concurrency: int) -> None:
    global model, processes
    import torch

    torch.set_num_threads(1)  # no intra-op pool in the parent: fork after threads can hang
    processes = max(1, concurrency)
    with without_obstore():  # nor obstore's runtime, whose threads the children would lack
        model = load_model_from(settings)
    log.info("echocam: model %s (%s) loaded", model.sha256[:12], model.weights)


def init_process() -> None:
    """After the fork: threads, device, and a warm-up so the first task is not slow."""
    n = set_threads(settings.threads, processes=processes)
    heap.return_large_blocks()
    ex = explainer(Params.from_dict(model.params or {}))  # a species model's own front end
    # One second of noise at 22 kHz: warms decoding, resampling, the device kernels and the
    # encoders before the first real task.
    noise = np.random.default_rng(0).standard_normal(22000).astype(np.float32) * 0.1
    buf = io.BytesIO()
    sf.write(buf, noise, 22000, format="WAV")
    (warm,) = ex.explain([Source("warmup.wav", buf.getvalue())])
    if warm.record["status"] != "ok":
        raise RuntimeError(f"warm-up failed: {warm.record['error_message']}")
    log.info("echocam: process ready on %s with %d threads", ex.device, n)


def loaded_model() -> LoadedModel:
    if model is None:
        raise RuntimeError("worker model not loaded (worker_init did not run)")
    return model


@cache
def explainer(params: Params) -> Explainer:
    """This process's explainer for ``params`` (raises InvalidParams if the model can't)."""
    return Explainer.from_settings(loaded_model(), params, settings, pool=pool())


@cache
def _client():
    return client_factory(settings)()


def store(uri: str) -> S3Store:
    s = open_store(uri, client_factory=_client)
    if not isinstance(s, S3Store):
        raise ValueError(f"workers read and write S3 only, not {uri!r}")
    return s


@cache
def pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(settings.io_threads, thread_name_prefix="echocam-io")


@cache
def redis():
    return progress.client(settings.broker_url)
