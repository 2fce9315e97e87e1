"""The tasks: a list of source keys plus the run's parameters → outputs and records in the bucket
(``process``), and the run's manifest once its last task is done (``compact``).

Thin glue over ``echocam.run.runner.run_chunks`` and ``echocam.bucket.manifest.compact``; Celery
supplies delivery, retries and time limits.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from obstore.exceptions import BaseError as ObstoreError
from redis.exceptions import RedisError

from echocam.bucket import faults, manifest, progress, protocol
from echocam.bucket.chunking import chunked
from echocam.bucket.storage import ObjectInfo
from echocam.errors import InvalidParams, ParamsMismatch
from echocam.run.runner import Outcome, record_failures, run_chunks
from echocam.settings import Params, fingerprint
from worker import state
from worker.app import app, settings

log = logging.getLogger(__name__)

#: Errors writing to the bucket (boto3's, and obstore's: ``S3Store.put``) or Redis: the whole
#: task retries (finished recordings are then skipped, and a task's outcomes are counted once).
TRANSIENT = (BotoCoreError, ClientError, ObstoreError, ConnectionError, TimeoutError, RedisError)
#: Celery retries a task that raised one of them, with exponential backoff and jitter.
RETRY = dict(
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=5,
)


@signals.worker_init.connect
def _load_model(sender=None, **_):
    try:
        state.load_model_in_parent(getattr(sender, "concurrency", 1) or 1)
    except Exception as e:
        # Celery only logs exceptions from signal handlers; a worker without a model must stop.
        log.critical("echocam: cannot load the model, stopping the worker: %s", e)
        print(f"echocam worker: cannot load the model: {e}", file=sys.stderr, flush=True)
        raise SystemExit(3) from e


@signals.worker_process_init.connect
def _init_process(**_):
    try:
        state.init_process()
    except Exception as e:
        log.critical("echocam: pool process cannot start: %s", e)
        os._exit(3)  # the parent sees the process die and reports it


def _give_up(infos: list[ObjectInfo], fail_all, error: Exception) -> list[Outcome]:
    """Retries exhausted: failed records if the bucket takes them, else count the failures so
    that progress still completes (the next ``produce`` finds no record and retries them)."""
    message = f"retries exhausted: {type(error).__name__}: {error}"
    log.error("echocam: %s", message)
    try:
        return fail_all("internal", message)
    except Exception:
        return [Outcome(it.key, "failed", "internal", 0, False, {}) for it in infos]


def _delivered(r, request) -> int:
    """How many times this try of the task has been delivered (a process that dies under it
    gets it again, until ``max_deliveries``)."""
    key = f"echocam:deliveries:{request.id}:{request.retries}"
    with r.pipeline() as p:
        p.incr(key)
        p.expire(key, progress.TTL_S)
        return p.execute()[0]


@app.task(name=protocol.TASK_NAME, bind=True, **RETRY)
def process(self, items: list[list], message: dict) -> dict:
    """Explain ``items`` for the run in ``message`` (see ``echocam.bucket.protocol``)."""
    infos = protocol.decode_items(items)
    run, redo = protocol.decode_run(message)
    r = state.redis()
    dst = state.store(run["output"])
    params = Params.from_dict(run["params"])
    model = state.loaded_model()
    fp = fingerprint(params, model.sha256)
    task_id = self.request.id

    def fail_all(code: str, message: str) -> list[Outcome]:
        return record_failures(
            infos,
            dst=dst,
            model=model.identity,
            fingerprint=fp,
            run_id=run["run_id"],
            code=code,
            message=message,
        )

    deliveries = _delivered(r, self.request)
    if fp != run["fingerprint"]:
        outcomes = fail_all(
            "model_mismatch",
            f"worker model {model.sha256[:12]} does not match the run's "
            f"{run['model']['sha256'][:12]}",
        )
    elif deliveries > settings.max_deliveries:
        outcomes = fail_all(
            "worker_lost",
            f"task {task_id} was delivered {deliveries - 1} times and its worker process "
            "died each time",
        )
    else:
        try:
            explainer = state.explainer(params)
            faults.before_task([it.key for it in infos])
            # Two chunks: the second is read and decoded while the first is on the device, the
            # first encoded and written while the second is; each still fills device batches.
            outcomes = run_chunks(
                chunked(infos, max(1, -(-len(infos) // 2))),
                src=state.store(run["input"]),
                dst=dst,
                explainer=explainer,
                run_id=run["run_id"],
                redo=redo,
                pool=state.pool(),
            )
        except InvalidParams as e:  # the run asks what this model cannot answer
            outcomes = fail_all(e.code, e.message)
        except ParamsMismatch as e:  # the run's model input is not the one the model learnt
            outcomes = fail_all("model_mismatch", f"worker model {model.sha256[:12]}: {e.message}")
        except SoftTimeLimitExceeded:
            outcomes = fail_all(
                "timeout", f"task exceeded its soft time limit of {settings.task_soft_time_limit} s"
            )
        except TRANSIENT as e:
            if self.request.retries < self.max_retries:
                raise  # Celery retries the task with backoff and jitter
            outcomes = _give_up(infos, fail_all, e)
        except Exception as e:  # e.g. out of device memory: record it, never drop the task
            log.exception("echocam: task %s failed", task_id)
            outcomes = fail_all("internal", f"{type(e).__name__}: {e}")
    _, ends_run = progress.task_done(r, run["run_id"], task_id, outcomes)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "failed")}
    log.info("echocam: task %s: %s", task_id, counts)
    if ends_run:  # the run's last task: its manifest is written next, by whichever worker
        protocol.send_compaction(app, r, run, wrote=True, queue=settings.queue)
    return counts


@app.task(
    name=protocol.COMPACTION_TASK,
    bind=True,
    **RETRY,
    soft_time_limit=settings.compaction_limits_s[0],
    time_limit=settings.compaction_limits_s[1],
)
def compact(self, output: str, run_id: str, wrote: bool = True) -> dict:
    """Write the manifest under ``output`` (tables, summary.json, folded index) for the run
    ``run_id`` that just ended, unless it ``wrote`` nothing and the manifest is current; its
    state goes to the run's progress in Redis."""
    r = state.redis()
    t0 = time.perf_counter()
    if (deliveries := _delivered(r, self.request)) > settings.max_deliveries:
        error = f"its worker process died each of {deliveries - 1} times"
    else:
        try:
            faults.before_compaction(output)
            store = state.store(output)
            if not wrote and manifest.up_to_date(store, page_size=settings.page_size):
                progress.compacted(r, run_id, seconds=time.perf_counter() - t0)
                log.info("echocam: manifest of run %s: current already", run_id)
                return {"current": True}
            summary = manifest.compact(store, page_size=settings.page_size)
        except TRANSIENT as e:
            if self.request.retries < self.max_retries:
                raise
            error = f"retries exhausted: {type(e).__name__}: {e}"
        except SoftTimeLimitExceeded:
            error = f"exceeded its time limit of {settings.compaction_limits_s[0]} s"
        except Exception as e:
            log.exception("echocam: compaction of %s failed", output)
            error = f"{type(e).__name__}: {e}"
        else:
            progress.compacted(r, run_id, seconds=time.perf_counter() - t0)
            log.info("echocam: manifest of run %s: %d recordings", run_id, summary["recordings"])
            return {"recordings": summary["recordings"]}
    log.error("echocam: compaction of %s failed: %s", output, error)
    progress.compaction_failed(r, run_id, f"{error}; `echocam manifest {output}` writes it")
    return {"error": error}


@app.task(name=protocol.SEARCH_TASK, acks_late=False)
def search(output: str, part: int, row_groups: list[int], query: list[float], options: dict,
           reply: str) -> None:  # fmt: skip
    """Part ``part`` of ``echocam search --distributed``: the best rows of ``row_groups`` of the
    run ``output``'s embeddings table like ``query`` (``echocam.search.scan``'s ``options``),
    without their vectors, pushed to the caller's Redis list ``reply`` (an error, too).  Not
    acked late: a lost part times the caller out, instead of a redelivery nobody waits for."""
    from echocam.explain.device import resolve_device
    from echocam.search import reply_part, run_batches, scan

    try:
        vector = np.asarray(query, np.float32)
        batches = run_batches(state.store(output), row_groups=row_groups)
        found = scan(batches, vector, **options, device=resolve_device(settings.device))
        rows = found.drop_columns(["vector"]).to_pylist() if found.num_rows else []
        reply_part(state.redis(), reply, part, rows=rows)
    except Exception as e:  # the caller is told at once, not after its timeout
        log.exception("echocam: search part %d of %s failed", part, output)
        reply_part(state.redis(), reply, part, error=f"{type(e).__name__}: {e}")
