"""The producer in-process, as a notebook calls it: real Redis, local source and output."""

from __future__ import annotations

import gc
import shutil

from celery import Celery

from echocam.bucket.storage import open_store
from echocam.settings import Params, Settings
from producer import enqueue
from tests.helpers import recordings

MODEL = {"arch": "resnet18", "sha256": "0" * 64, "weights": "random"}


def _producer(redis_srv, tmp_path):
    """produce() with its arguments bound: a source folder of two recordings, a real Redis."""
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    for path in recordings()[:2]:
        shutil.copy(path, src / path.name)
    settings = Settings.from_env({}, broker_url=redis_srv.url, queue="test-enqueue")
    app = Celery("test-enqueue", broker=redis_srv.url)
    stores = open_store(str(src)), open_store(str(tmp_path / "out"))
    return lambda: enqueue.produce(
        *stores, app=app, model=MODEL, params=Params(), settings=settings
    )


def test_produce_freezes_the_older_objects_only_while_it_runs(redis_srv, tmp_path):
    produce, seen = _producer(redis_srv, tmp_path), []
    gc.callbacks.append(lambda phase, info: seen.append(gc.get_freeze_count()))
    try:
        out = produce()
    finally:
        gc.callbacks.pop()
    assert out.recordings == 2 and out.tasks >= 1
    assert gc.get_freeze_count() == 0  # a notebook's heap is as it was
    assert seen and min(seen) > 0  # every collection during the run left the older objects out


def test_produce_leaves_a_callers_freeze_alone(redis_srv, tmp_path):
    produce = _producer(redis_srv, tmp_path)
    gc.freeze()
    try:
        assert produce().recordings == 2
        assert gc.get_freeze_count() > 0  # not undone by produce (some frozen objects died)
    finally:
        gc.unfreeze()
