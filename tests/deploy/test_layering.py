"""The producer side never imports torch: the slim image (docker/Dockerfile, target `producer`) has
no torch, no CUDA and no model stack, and runs the producer, Flower and the metrics exporter.

Each check runs in a fresh interpreter; the "slim" ones make the model stack unimportable first
(``sys.modules[name] = None``), as if it were not installed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from devtools.services import RedisServer, free_port, wait_for
from tests.helpers import marks, own_queue, start_worker

ROOT = Path(__file__).resolve().parents[2]
# What the worker image has and the slim image does not (pyproject dependencies and their own).
MODEL_STACK = (
    "torch",
    "torchvision",
    "librosa",
    "numba",
    "llvmlite",
    "soundfile",
    "soxr",
    "PIL",
    "scipy",
    "sklearn",
    "numpy",
)
#: The whole torch-free layer: every module of ``echocam.bucket``, found on disk, not listed.
BUCKET_MODULES = tuple(
    sorted(
        f"echocam.bucket.{p.stem}"
        for p in (ROOT / "echocam" / "bucket").glob("*.py")
        if p.stem != "__init__"
    )
)
PRODUCER_MODULES = (
    "producer.enqueue",
    "producer.status",
    "producer.workers",
    "producer.exporter",
    "worker.app",
    "echocam_cli",
    *BUCKET_MODULES,
    "echocam.errors",
    "echocam.settings",
)
# Runs argv[1] as ``python -m`` with the model stack unimportable.
SLIM = (
    "import runpy, sys\n"
    f"for name in {MODEL_STACK!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def python(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_producer_path_does_not_import_torch():
    # (numpy may be imported where installed: pyarrow uses it if present.)
    code = (
        "import sys\n"
        f"for m in {PRODUCER_MODULES!r}: __import__(m)\n"
        "heavy = ('torch', 'torchvision', 'librosa', 'numba')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"the producer path imported {proc.stdout.strip()}"


def test_the_bucket_package_is_whole_and_imports_no_other_echocam_package():
    """``echocam.bucket`` stands on ``errors`` and ``settings`` alone: no signal, model, run,
    training or viewer code, so the producer's image needs none of their dependencies."""
    assert len(BUCKET_MODULES) >= 12 and "echocam.bucket.index" in BUCKET_MODULES
    code = (
        "import sys\n"
        f"for m in {BUCKET_MODULES!r}: __import__(m)\n"
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('echocam.')}))\n"
    )
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['bucket', 'errors', 'settings']", proc.stdout


def test_no_echocam_module_needs_librosa_at_run_time():
    """librosa is a test oracle only: every module imports, and the pointing game's mel
    arithmetic runs, with librosa (and numba) unimportable."""
    code = (
        "import pkgutil, sys\n"
        "for name in ('librosa', 'numba'):\n"
        "    sys.modules[name] = None\n"
        "import echocam\n"
        "names = [m.name for m in pkgutil.walk_packages(echocam.__path__, 'echocam.')]\n"
        "for m in names: __import__(m)\n"
        "from echocam.settings import Params\n"
        "from echocam.train.pointing import Tolerance\n"
        "print(len(names), Tolerance.half_cell(Params()).mel > 0)\n"
    )
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    n, ok = proc.stdout.split()
    assert int(n) > 40 and ok == "True", proc.stdout


def test_producer_package_imports_nothing_from_worker():
    """The contract lives in ``echocam.bucket.protocol``: the producer gets the Celery app passed in
    (by the CLI) and imports no module of ``worker/``."""
    code = (
        "import sys\n"
        f"for m in {tuple(m for m in PRODUCER_MODULES if m.startswith('producer.'))!r}:\n"
        "    __import__(m)\n"
        "print(sorted(m for m in sys.modules if m == 'worker' or m.startswith('worker.')))\n"
    )
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"the producer imported {proc.stdout.strip()}"


def test_producer_path_imports_without_the_model_stack():
    code = (
        f"import sys\nfor name in {MODEL_STACK!r}: sys.modules[name] = None\n"
        f"for m in {PRODUCER_MODULES!r}: __import__(m)\n"
        "import flower.command, prometheus_client, boto3, pyarrow.parquet\n"
    )
    proc = python(code)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("command", ["--help", "produce --help", "status --help"])
def test_cli_help_without_the_model_stack(command):
    proc = python(SLIM, "echocam_cli", *command.split())
    assert proc.returncode == 0, proc.stderr
    assert "usage: echocam" in proc.stdout


def test_producer_commands_open_stores_without_the_model_stack():
    # What `echocam produce` and `echocam status` do before talking to Redis and S3.
    code = (
        f"import sys\nfor name in {MODEL_STACK!r}: sys.modules[name] = None\n"
        "from echocam_cli import _producer_context, build_parser\n"
        "args = build_parser().parse_args(['status', 's3://bucket/run'])\n"
        "settings, store = _producer_context(args)\n"
        "print(type(store('s3://bucket/run')).__name__)\n"
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    env["ECHOCAM_S3_ENDPOINT_URL"] = "http://127.0.0.1:9"
    proc = python(code, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "S3Store"


def _compose_service(name: str) -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][name]


def _get(url: str, auth: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""


@pytest.fixture(scope="module")
@marks("redis")
def redis_srv():
    with RedisServer(password="layering-pw") as srv:
        yield srv


def test_flower_as_composed_runs_without_the_model_stack(redis_srv, tmp_path):
    """docker-compose.yml's flower command and environment, on 127.0.0.1, without torch."""
    svc = _compose_service("flower")
    assert svc["command"][0] == "celery"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "CELERY_"))}
    for name, value in svc["environment"].items():
        if "${" not in str(value):  # literal settings, as composed
            env[name] = str(value)
    assert set(svc["environment"]) >= {"CELERY_BROKER_URL", "FLOWER_BASIC_AUTH"}
    auth = "flower-user:flower-pw"
    port = free_port()
    env |= {
        "CELERY_BROKER_URL": redis_srv.url,
        "FLOWER_BASIC_AUTH": auth,
        "FLOWER_ADDRESS": "127.0.0.1",
        "FLOWER_PORT": str(port),
    }
    log = (tmp_path / "flower.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLIM, *svc["command"]],
        cwd=tmp_path,  # not the repo: Flower must not need the project's code
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "flower.log").read_text()
            try:
                return _get(base + "/healthcheck")[0] == 200
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for(healthy, timeout=60, what="flower /healthcheck")
        assert _get(base + "/")[0] == 401
        assert _get(base + "/", auth="flower-user:wrong")[0] == 401
        assert _get(base + "/", auth=auth)[0] == 200
        assert _get(base + "/api/workers", auth=auth)[0] == 200
        status, text = _get(base + "/metrics")  # open by Flower's design (documented)
        assert status == 200 and "flower_" in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    text = (tmp_path / "flower.log").read_text()
    assert "Traceback" not in text, text


def test_worker_healthcheck_command_needs_no_torch(redis_srv):
    """The image's HEALTHCHECK (`celery inspect ping` of its own node) runs without the model stack
    and fails, rather than crashes, when no worker answers."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    check = re.search(r'"celery (-A worker\.app inspect ping [^>]*?)\s*>', dockerfile)
    assert check, "worker HEALTHCHECK with `celery -A worker.app inspect ping` not found"
    argv = check.group(1).replace('\\"', "").replace("$HOSTNAME", "no-such-host").split()
    argv[argv.index("10")] = "1"  # --timeout
    env = {**os.environ, "ECHOCAM_BROKER_URL": redis_srv.url}
    proc = python(SLIM, "celery", *argv, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode != 0
    assert "No nodes replied" in proc.stdout + proc.stderr


def _healthcheck_argv() -> list[str]:
    """The worker image's HEALTHCHECK command, as docker runs it (the exec form of CMD)."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in dockerfile.splitlines() if ln.startswith("HEALTHCHECK ")]
    return json.loads(line.split(" CMD ", 1)[1])


@pytest.fixture(scope="module")
@marks("worker")
def live_worker(redis_srv, species_checkpoint, tmp_path_factory, request):
    """A worker as the image starts it: node name Celery's default, celery@<host name>."""
    env = {
        **os.environ,
        "ECHOCAM_BROKER_URL": redis_srv.url,
        "ECHOCAM_WEIGHTS": str(species_checkpoint),
        "ECHOCAM_QUEUE": own_queue(request),
        "ECHOCAM_THREADS": "1",
    }
    log_dir = tmp_path_factory.mktemp("worker")
    return start_worker(request, env, name="celery", log_dir=log_dir, args=["--device", "cpu"])


def test_worker_healthcheck_command_passes_for_a_live_worker(redis_srv, live_worker, tmp_path):
    """Exactly the Dockerfile's HEALTHCHECK command, in a shell with the container's HOSTNAME,
    succeeds while the worker runs; for another host name it fails (it asks its own node only)."""
    argv = _healthcheck_argv()
    assert argv[:2] == ["/bin/sh", "-c"] and "inspect ping" in argv[2]
    env = {
        **os.environ,
        "ECHOCAM_BROKER_URL": redis_srv.url,
        "HOSTNAME": socket.gethostname(),  # docker sets it to the container's host name
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),  # the image installs the package; here it is the checkout
    }

    def run(argv: list[str], **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, env={**env, **extra}, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    proc = run(argv)
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{live_worker.log_tail()}"
    other = [*argv[:2], argv[2].replace("--timeout 10", "--timeout 1")]
    assert other != argv
    assert run(other, HOSTNAME="another-host").returncode != 0
