"""The Celery app as configured (``worker.app``): the delivery settings docs/design/guarantees.md
lists, and time limits that would redeliver a running task refused, in the settings and at import.
Each app is imported in a fresh interpreter with only the ``ECHOCAM_*`` variables given."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

_CONF = """
import json
from worker.app import app
c = app.conf
print(json.dumps({k: c[k] for k in (
    "task_acks_late", "task_reject_on_worker_lost", "worker_prefetch_multiplier",
    "accept_content", "task_serializer", "result_serializer", "event_serializer",
    "task_soft_time_limit", "task_time_limit", "broker_transport_options")}))
"""


def celery_conf(**env: str) -> subprocess.CompletedProcess:
    """Import ``worker.app`` in a fresh interpreter with only these ``ECHOCAM_*`` variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ECHOCAM_")}
    return subprocess.run(
        [sys.executable, "-c", _CONF],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "env, limits",
    [
        ({}, (600, 720, 7200)),  # docs/design/guarantees.md: 10 min soft, 12 min hard, 2 h
        (
            {
                "ECHOCAM_TASK_SOFT_TIME_LIMIT": "50",
                "ECHOCAM_TASK_TIME_LIMIT": "70",
                "ECHOCAM_VISIBILITY_TIMEOUT": "90",
            },
            (50, 70, 90),
        ),
    ],
)
def test_the_configured_celery_app_has_the_delivery_settings_the_readme_lists(env, limits):
    proc = celery_conf(**env)
    assert proc.returncode == 0, proc.stderr
    conf = json.loads(proc.stdout)
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["event_serializer"] == "json"
    soft, hard = conf["task_soft_time_limit"], conf["task_time_limit"]
    visibility = conf["broker_transport_options"]["visibility_timeout"]
    assert (soft, hard, visibility) == limits
    assert visibility > hard > soft > 0


@pytest.mark.parametrize(
    "soft, hard, visibility",
    [(720, 600, 7200), (600, 600, 7200), (600, 7200, 7200), (600, 8000, 7200), (0, 720, 7200)],
)
def test_settings_refuse_time_limits_that_would_redeliver_a_running_task(soft, hard, visibility):
    from echocam.settings import Settings

    with pytest.raises(ValueError, match="task_soft_time_limit < task_time_limit"):
        Settings(task_soft_time_limit=soft, task_time_limit=hard, visibility_timeout=visibility)
    Settings(task_soft_time_limit=1, task_time_limit=2, visibility_timeout=3)  # consistent: fine


def test_a_worker_app_with_a_visibility_timeout_below_the_time_limit_does_not_import():
    proc = celery_conf(ECHOCAM_TASK_TIME_LIMIT="900", ECHOCAM_VISIBILITY_TIMEOUT="800")
    assert proc.returncode != 0 and "visibility_timeout" in proc.stderr
