"""Fixtures for every test (checkpoints the tests make, a loaded model, the trained species model,
a Redis), and the suite's rules, checked as it runs:

- **markers per service** (``redis``, ``s3``, ``worker``, ``browser``, ``training``): a fixture
  declares what it starts with :func:`tests.helpers.marks`, and every test that uses it, directly
  or through other fixtures, gets those markers at collection; a process of a service started by
  a test without its marker (whatever starts it: a fixture, the test body, a library) fails that
  test, so the markers cannot drift from what the tests do; ``tests/unit`` uses no service;
- **workers**: none started by the suite is alive at its end (each is stopped by the fixture or
  test that started it, through :func:`tests.helpers.start_worker`);
- **order**: with pytest-randomly the seed is printed last, to replay a failing order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.services import RedisServer, SeaweedS3
from devtools.stack import Worker
from tests.helpers import SPECIES, marks, owner_of

# the species fixtures (one training per session), for every test file
from tests.trained_species import species_data, trained_species  # noqa: F401

SERVICES = ("redis", "s3", "worker", "browser", "training")
UNIT = Path(__file__).parent / "unit"


@pytest.fixture(scope="session")
def species_checkpoint(tmp_path_factory) -> Path:
    """A 3-species ResNet-18 checkpoint, as a species model would be shipped (seeded weights)."""
    import torch
    from torchvision.models import resnet18

    from echocam.explain.model import save_checkpoint

    torch.manual_seed(1234)
    net = resnet18(weights=None, num_classes=len(SPECIES))
    path = tmp_path_factory.mktemp("ckpt") / "species.pt"
    save_checkpoint(path, net.state_dict(), SPECIES)
    return path


@pytest.fixture(scope="session")
def species_model(species_checkpoint):
    from echocam.explain.model import load_model

    return load_model(str(species_checkpoint))


@pytest.fixture(scope="module")
@marks("redis")
def redis_srv():
    with RedisServer(password="s3cret-pw") as srv:
        yield srv


@pytest.fixture(scope="module")
@marks("s3")
def seaweed():
    """A SeaweedFS S3 server for the module (its tests create their buckets)."""
    with SeaweedS3() as s3:
        yield s3


@pytest.fixture
def r(redis_srv):
    client = redis_srv.client()
    client.flushdb()
    yield client
    client.close()


# -- markers from the fixtures a test uses ---------------------------------------------------


def pytest_collection_modifyitems(config, items) -> None:
    misplaced = []
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for name in info.names_closure if info else ():
            defs = info.name2fixturedefs.get(name)
            for marker in getattr(defs[-1].func, "echocam_marks", ()) if defs else ():
                item.add_marker(marker)
        used = [s for s in SERVICES if item.get_closest_marker(s)]
        if used and Path(item.path).is_relative_to(UNIT):
            misplaced.append(f"{item.nodeid}: {', '.join(used)}")
    if misplaced:
        raise pytest.UsageError(
            "tests/unit is the layer without services (make test-fast); move these to "
            "tests/integration or tests/browser:\n  " + "\n  ".join(misplaced)
        )


# -- the guard: a service's process started by a test without the service's marker -----------

_running: list[pytest.Item] = []  # the test whose setup, call or teardown runs now
_popen_init = subprocess.Popen.__init__


def service_of(args) -> str | None:
    """The service (a marker's name) whose process ``args`` starts, or None."""
    argv = args.split() if isinstance(args, str) else [os.fspath(a) for a in args]
    names = [os.path.basename(a) for a in argv]
    for binary, service in (("redis-server", "redis"), ("weed", "s3"), ("chromedriver", "browser")):
        if binary in names:
            return service
    for cli in ("echocam_cli", "echocam"):
        if cli in names[:3] and "--help" not in argv:
            command = names[names.index(cli) + 1 :][:1]
            return {"worker": "worker", "train": "training"}.get(command[0]) if command else None
    return None


def _guarded_popen_init(self, args, *rest, **kwargs) -> None:
    service = service_of(args)
    if service and _running and _running[-1].get_closest_marker(service) is None:
        raise RuntimeError(
            f"{_running[-1].nodeid} starts {service!r} ({args!r}) without the "
            f"`{service}` marker: declare it on the fixture that starts it "
            f"(@tests.helpers.marks({service!r})) or mark the test"
        )
    _popen_init(self, args, *rest, **kwargs)


def _guard_training_in_process() -> None:
    """Check ``echocam.train.loop.train`` too, from the time a test has imported it (importing
    it here would cost every run the model stack's import)."""
    loop = sys.modules.get("echocam.train.loop")
    if loop is None or getattr(loop.train, "guarded", False):
        return
    train = loop.train

    def guarded(*args, **kwargs):
        if _running and _running[-1].get_closest_marker("training") is None:
            raise RuntimeError(f"{_running[-1].nodeid} trains without the `training` marker")
        return train(*args, **kwargs)

    guarded.guarded = True
    loop.train = guarded


def pytest_configure(config) -> None:
    subprocess.Popen.__init__ = _guarded_popen_init


def pytest_unconfigure(config) -> None:
    subprocess.Popen.__init__ = _popen_init


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _guard_training_in_process()
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


# -- no worker outlives the suite ------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def no_worker_left():
    """Torn down last: every worker the suite started has stopped, and each was started by
    :func:`tests.helpers.start_worker` (which stops it with its owner)."""
    yield
    alive = [w for w in Worker.started if w.alive()]
    unowned = [w for w in Worker.started if owner_of(w) is None]
    for w in alive:
        w.stop(signal.SIGKILL)
    problems = [f"worker {w.name} (pid {w.proc.pid}, {owner_of(w)}) still running" for w in alive]
    problems += [f"worker {w.name} not started by tests.helpers.start_worker" for w in unowned]
    assert not problems, "\n".join(problems)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if config.pluginmanager.hasplugin("randomly") and config.getoption("randomly_reorganize"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(
            f"test order: pytest-randomly seed {seed}; replay it with "
            f"`pytest -p randomly -p no:cacheprovider --randomly-seed={seed}`"
        )
