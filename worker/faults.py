"""Fault injection for the reliability tests.  Inert unless ``ECHOCAM_FAULTS`` is set.

``ECHOCAM_FAULTS`` is JSON: ``{"crash": "SUBSTR"}`` ends the pool process (``os._exit``) when a
task holds a key containing SUBSTR, as a segfaulting decoder would; ``{"sleep": {"SUBSTR": S}}``
sleeps S seconds before such a task's work, as a hung download would.  Never set in production.
"""

from __future__ import annotations

import json
import os
import time


def before_task(keys: list[str]) -> None:
    spec = os.environ.get("ECHOCAM_FAULTS")
    if not spec:
        return
    faults = json.loads(spec)
    crash = faults.get("crash")
    if crash and any(crash in k for k in keys):
        os._exit(70)
    for substr, seconds in (faults.get("sleep") or {}).items():
        if any(substr in k for k in keys):
            time.sleep(float(seconds))
