"""What the tests share that is not a fixture: where the recordings are, audio made on the fly,
and how a test or fixture declares its markers, gets its own queue and starts its workers."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from devtools.stack import Worker

ROOT = Path(__file__).resolve().parent.parent  # the repository
# ECHOCAM_TEST_RECORDINGS points elsewhere (a path that does not exist: a run without ../shared).
RECORDINGS = Path(
    os.environ.get("ECHOCAM_TEST_RECORDINGS") or ROOT.parent / "shared" / "data" / "recordings"
)
SAMPLES = ROOT / "samples"  # a few of the shared recordings, in the repository
SPECIES = ["Charadrius ruficapillus", "Chenonetta jubata", "Chlamydera nuchalis"]


def recordings() -> list[Path]:
    """The shared recordings; the repository's samples/ when ../shared is absent."""
    folder = RECORDINGS if RECORDINGS.is_dir() else SAMPLES
    return sorted(p for p in folder.glob("*") if p.suffix in (".wav", ".mp3"))


def recording(name: str) -> Path | None:
    """The recording ``name`` from the shared set, else from samples/; None where neither has it."""
    for folder in (RECORDINGS, SAMPLES):
        if (folder / name).is_file():
            return folder / name
    return None


def available(names: list[str]) -> list[str]:
    """Those of ``names`` that :func:`recording` finds (samples/ alone holds only some)."""
    return [n for n in names if recording(n) is not None]


def needs_recording(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        recording(name) is None, reason=f"{name} not in ../shared nor samples/"
    )


needs_shared = pytest.mark.skipif(
    not RECORDINGS.is_dir(), reason=f"shared recordings not found at {RECORDINGS}"
)


def wav_bytes(samples: np.ndarray, sr: int, *, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def chirp(seconds: float, sr: int, *, f0: float = 1000.0, f1: float = 6000.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / (2 * seconds)) * t)).astype(np.float32)


def explain_store(src, dst, model, *, run_id: str, force: bool = False, **params):
    """Explain the WAV files of store ``src`` into store ``dst`` as a worker does (chunks of two,
    on the CPU, with ``Params(**params)``): (the items listed, their outcomes)."""
    from concurrent.futures import ThreadPoolExecutor

    from echocam.bucket.chunking import chunked
    from echocam.bucket.protocol import Redo
    from echocam.explain.pipeline import Explainer
    from echocam.run.runner import run_chunks
    from echocam.settings import Params

    items = list(src.list(suffixes=(".wav",)))
    with ThreadPoolExecutor(4) as pool:
        ex = Explainer(model, Params(**params), device="cpu", batch_size=8, pool=pool)
        outcomes = run_chunks(
            chunked(items, 2),
            src=src,
            dst=dst,
            explainer=ex,
            run_id=run_id,
            redo=Redo(force=force),
            pool=pool,
        )
    return items, outcomes


# -- markers, queues and workers owned by a test or a fixture ------------------------------


def marks(*names: str):
    """Declare the markers of every test that uses the decorated fixture, directly or through
    other fixtures (applied at collection by tests/conftest.py): the services it starts, or
    ``slow``.  Put it under ``@pytest.fixture``."""

    def declare(fixture):
        fixture.echocam_marks = tuple(getattr(pytest.mark, n) for n in names)
        return fixture

    return declare


_queues: dict[str, str] = {}  # owner -> its queue
_owners: dict[int, str] = {}  # id(worker) -> its owner


def _owner(request: pytest.FixtureRequest) -> str:
    """Who owns what ``request`` starts: the test (its node id), or the fixture (its name on the
    node of its scope: the test, the module, the session)."""
    return f"{request.node.nodeid}::{request.fixturename or ''}".rstrip(":")


def own_queue(request: pytest.FixtureRequest) -> str:
    """A Celery queue of the test or fixture that ``request`` serves, named from its node id:
    no other test or fixture is given it, so no worker of theirs takes its tasks.  Put it in
    the ``ECHOCAM_QUEUE`` of the producer and of the workers (:func:`start_worker`)."""
    owner = _owner(request)
    if owner not in _queues:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", owner).strip("-")[-60:]
        _queues[owner] = f"test-{slug}-{hashlib.sha1(owner.encode()).hexdigest()[:8]}"
    return _queues[owner]


def start_worker(
    request: pytest.FixtureRequest,
    env: dict[str, str],
    *,
    name: str,
    log_dir: Path,
    args: list[str] = (),
    ready: bool = True,
) -> Worker:
    """Start ``echocam worker`` for the test or fixture that ``request`` serves, on its own
    queue (``env``'s ``ECHOCAM_QUEUE`` must be :func:`own_queue`'s), and stop it (by PID, its
    whole process group) at that test's or fixture's teardown; ``ready``: wait until it
    consumes."""
    queue = own_queue(request)
    assert env.get("ECHOCAM_QUEUE") == queue, (
        f"a worker of {_owner(request)} on queue {env.get('ECHOCAM_QUEUE')!r}: "
        f"use its own, {queue!r} (tests.helpers.own_queue)"
    )
    worker = Worker(env, name=name, log_dir=log_dir, args=list(args))
    request.addfinalizer(worker.stop)
    worker.start()
    _owners[id(worker)] = _owner(request)
    if ready:
        worker.wait_ready()
    return worker


def owner_of(worker: Worker) -> str | None:
    """The test or fixture that started ``worker`` with :func:`start_worker`, else None."""
    return _owners.get(id(worker))
