"""A run's description (``run.json`` under the output prefix): id, fingerprint, model, params."""

from __future__ import annotations

import json
import uuid
from typing import Any

from echocam.bucket.index import COMPLETE
from echocam.bucket.protocol import RESUME, Redo
from echocam.bucket.records import now_iso, version
from echocam.bucket.storage import Store, read_json
from echocam.settings import Params, fingerprint

RUN_NAME = "run.json"


def describe(
    *,
    model: dict[str, Any],
    params: Params,
    input_uri: str,
    output_uri: str,
    mode: str,
    class_names: list[str] | None = None,
    redo: Redo = RESUME,
) -> dict[str, Any]:
    """A new run: ``model`` is the model identity (``LoadedModel.identity``).

    ``class_names``, the model's classes in id order, are kept once per run here (records and
    ``cam.npz`` name only the classes they mention); None when unknown (``--model-sha256``).
    ``redo`` (``--force``, ``--retry-failed``) says what the run's skipped recordings are.
    """
    run = {
        "run_id": uuid.uuid4().hex,
        "fingerprint": fingerprint(params, model["sha256"]),
        "model": model,
        "params": params.to_dict(),
        "input": input_uri,
        "output": output_uri,
        "mode": mode,
        "created_at": now_iso(),
        "echocam_version": version(),
        "redo": redo.to_dict(),
    }
    if class_names is not None:
        run["class_names"] = list(class_names)
    return run


def save(store: Store, run: dict[str, Any]) -> None:
    """Write ``run.json``; into a prefix no run has written, also the done index's sentinel
    (``echocam.bucket.index.COMPLETE``: records there all get markers)."""
    if read_json(store, RUN_NAME) is None:
        store.put(COMPLETE, b'{"version": 1}\n')
    store.put(RUN_NAME, (json.dumps(run, indent=1, sort_keys=True) + "\n").encode())
