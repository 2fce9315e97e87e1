"""The producer in-process, as a notebook calls it: real Redis, local source and output."""

from __future__ import annotations

import gc
import shutil

from celery import Celery

from echocam.bucket.storage import LocalStore, open_store
from echocam.settings import Params, Settings
from producer import enqueue
from tests.helpers import own_queue, recordings

MODEL = {"arch": "resnet18", "sha256": "0" * 64, "weights": "random"}


class WatchedStore(LocalStore):
    """A directory whose listing, for each file it gives, forces a full collection and notes
    whether ``older`` (an object made before the listing) was left out of the collector's
    generations, i.e. frozen: (freeze count, ``older`` frozen)."""

    def __init__(self, root, older: object):
        super().__init__(root)
        self.older, self.noted = older, []

    def list(self, *args, **kwargs):
        for info in super().list(*args, **kwargs):
            gc.collect()
            frozen = not any(o is self.older for o in gc.get_objects())
            self.noted.append((gc.get_freeze_count(), frozen))
            yield info


def _producer(redis_srv, tmp_path, request, *, src=None):
    """produce() with its arguments bound: a source folder of two recordings (``src``: a store
    over it), a real Redis, the test's own queue."""
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for path in recordings()[:2]:
        shutil.copy(path, folder / path.name)
    settings = Settings.from_env({}, broker_url=redis_srv.url, queue=own_queue(request))
    app = Celery("test-enqueue", broker=redis_srv.url)
    stores = src or open_store(str(folder)), open_store(str(tmp_path / "out"))
    return lambda: enqueue.produce(
        *stores, app=app, model=MODEL, params=Params(), settings=settings
    )


def test_produce_freezes_the_older_objects_only_while_it_runs(redis_srv, tmp_path, request):
    older = [object()]  # a container: tracked by the collector
    src = WatchedStore(tmp_path / "in", older)
    produce, seen = _producer(redis_srv, tmp_path, request, src=src), []
    gc.callbacks.append(lambda phase, info: seen.append(gc.get_freeze_count()))
    try:
        out = produce()
    finally:
        gc.callbacks.pop()
    assert out.recordings == 2 and out.tasks >= 1
    assert len(src.noted) == 2 and all(count > 0 and frozen for count, frozen in src.noted)
    assert gc.get_freeze_count() == 0  # a notebook's heap is as it was
    assert any(o is older for o in gc.get_objects())  # collected again
    assert seen and min(seen) > 0  # every collection during the run left the older objects out


def test_produce_leaves_a_callers_freeze_alone(redis_srv, tmp_path, request):
    produce = _producer(redis_srv, tmp_path, request)
    gc.freeze()
    try:
        assert produce().recordings == 2
        assert gc.get_freeze_count() > 0  # not undone by produce (some frozen objects died)
    finally:
        gc.unfreeze()
