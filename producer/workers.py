"""Ask the running workers which model they hold (a remote-control broadcast, no torch)."""

from __future__ import annotations

from celery import Celery


class NoWorkers(RuntimeError):
    code = "no_workers"


def model_identity(app: Celery, *, queue: str, timeout: float) -> dict:
    """The model identity every worker consuming ``queue`` reports; they must agree."""
    return describe(app, queue=queue, timeout=timeout)[0]


def describe(app: Celery, *, queue: str, timeout: float) -> tuple[dict, dict | None]:
    """(model identity, the analysis parameters it was trained with or None) of the workers."""
    replies = app.control.broadcast("echocam_model", reply=True, timeout=timeout)
    models, trained = {}, None
    for reply in replies or []:
        for host, answer in reply.items():
            if isinstance(answer, dict) and queue in answer.get("queues", ()) and answer["model"]:
                models[host] = answer["model"]
                trained = answer.get("params")
    if not models:
        raise NoWorkers(
            f"no worker on queue {queue!r} answered within {timeout:g} s: start one with "
            "`echocam worker`, or pass --model-sha256 to enqueue before workers run"
        )
    shas = {m["sha256"] for m in models.values()}
    if len(shas) > 1:
        raise NoWorkers(f"workers on queue {queue!r} hold different models: {models}")
    return next(iter(models.values())), trained
