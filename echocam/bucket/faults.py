"""Fault injection for the reliability tests.  Inert unless ``ECHOCAM_FAULTS`` is set.

``ECHOCAM_FAULTS`` is JSON:
- ``{"crash": "SUBSTR"}`` ends the pool process (``os._exit``) when a task holds a key containing
  SUBSTR, as a segfaulting decoder would;
- ``{"sleep": {"SUBSTR": S}}`` sleeps S seconds before such a task's work, as a hung read would;
- ``{"raise": "SUBSTR"}`` raises a RuntimeError in such a task, as a bug or a device error would;
- ``{"send_delay": S}`` makes the producer pause S seconds after each task it sends;
- ``{"compaction_raise": "SUBSTR"}`` raises a RuntimeError in a run-end compaction whose output
  URI contains SUBSTR, as a full disk would.
Never set in production.  Here, not in ``worker/``, because the producer calls
:func:`after_send` and imports nothing from the worker.
"""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger(__name__)


def _faults() -> dict:
    spec = os.environ.get("ECHOCAM_FAULTS")
    return json.loads(spec) if spec else {}


def before_task(keys: list[str]) -> None:
    faults = _faults()
    crash = faults.get("crash")
    if crash and any(crash in k for k in keys):
        log.warning("echocam fault: crashing pool process %d on %s", os.getpid(), keys)
        os._exit(70)
    fail = faults.get("raise")
    if fail and any(fail in k for k in keys):
        raise RuntimeError(f"echocam fault: an unexpected error on {keys}")
    for substr, seconds in (faults.get("sleep") or {}).items():
        if any(substr in k for k in keys):
            log.warning("echocam fault: sleeping %s s in pid %d on %s", seconds, os.getpid(), keys)
            time.sleep(float(seconds))


def after_send() -> None:
    delay = _faults().get("send_delay")
    if delay:
        time.sleep(float(delay))


def before_compaction(output: str) -> None:
    fail = _faults().get("compaction_raise")
    if fail and fail in output:
        raise RuntimeError(f"echocam fault: compaction of {output} failed")
