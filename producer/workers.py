"""Ask the running workers which model they hold (a remote-control broadcast, no torch)."""

from __future__ import annotations

import time

from celery import Celery


class NoWorkers(RuntimeError):
    code = "no_workers"


def _models(replies: list[dict] | None, queue: str) -> dict[str, dict]:
    models = {}
    for reply in replies or []:
        for host, answer in reply.items():
            if isinstance(answer, dict) and queue in answer.get("queues", ()) and answer["model"]:
                models[host] = {
                    **answer["model"],
                    "class_names": answer.get("class_names"),
                    "params": answer.get("params"),
                }
    return models


def model_identity(app: Celery, *, queue: str, timeout: float, every: float = 1.0) -> dict:
    """The model identity every worker consuming ``queue`` reports; they must agree.

    Its ``class_names`` (the list, from workers that report it) and ``params`` (the analysis
    parameters a trained checkpoint carries, or None) let the producer check and complete the
    run's parameters before it enqueues anything; they are not part of the identity.

    A broadcast reaches only the workers running when it is sent, so ask again every
    ``every`` seconds (each round collects the replies for that long) until a worker on
    ``queue`` answers with its model, or ``timeout`` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        window = max(0.1, min(every, deadline - time.monotonic()))
        models = _models(app.control.broadcast("echocam_model", reply=True, timeout=window), queue)
        if models or time.monotonic() >= deadline:
            break
    if not models:
        raise NoWorkers(
            f"no worker on queue {queue!r} answered within {timeout:g} s: start one with "
            "`echocam worker`, or pass --model-sha256 to enqueue before workers run"
        )
    shas = {m["sha256"] for m in models.values()}
    if len(shas) > 1:
        raise NoWorkers(f"workers on queue {queue!r} hold different models: {models}")
    return next(iter(models.values()))
