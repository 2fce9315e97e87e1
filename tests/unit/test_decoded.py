"""Training's decoded recordings (``echocam.train.decoded``): decoded once, read as bytes after,
never stale, nothing kept of a bad file, and the same windows as decoding every time."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from echocam.bucket.storage import LocalStore
from echocam.errors import EchoCamError
from echocam.settings import Params
from echocam.train.config import Augment
from echocam.train.dataset import Loader
from echocam.train.decoded import Decoded, decoded_for, load_samples
from echocam.train.labels import Example
from tests.helpers import RECORDINGS, needs_shared

pytestmark = [needs_shared]

NAME = "spinetail_44k.wav"  # 44.1 kHz: decoding resamples it


class CountingStore(LocalStore):
    """A local store that counts the objects read whole."""

    def __init__(self, root):
        super().__init__(root)
        self.gets: list[str] = []

    def get(self, key, *, max_bytes=None):
        self.gets.append(key)
        return super().get(key, max_bytes=max_bytes)


@pytest.fixture()
def source(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    shutil.copy(RECORDINGS / NAME, root / NAME)
    return root


def test_a_recording_is_decoded_once_then_read_from_disk(tmp_path, source):
    params = Params()
    store = CountingStore(source)
    decoded = Decoded(tmp_path / "cache", params=params)
    first = decoded.samples(store, NAME)
    again = decoded.samples(store, NAME)
    later_run = Decoded(tmp_path / "cache", params=params).samples(store, NAME)
    expected = load_samples(LocalStore(source), NAME, params=params)
    assert store.gets == [NAME]  # the two later reads came from the cache
    for got in (first, again, later_run):
        assert got.dtype == np.float32 and np.array_equal(got, expected)
    assert isinstance(again, np.memmap) and not again.flags.writeable
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_a_changed_recording_or_rate_is_decoded_again(tmp_path, source):
    params = Params()
    store = CountingStore(source)
    before = Decoded(tmp_path / "cache", params=params).samples(store, NAME)
    # the file replaced by other audio: the next run must not read the old samples
    shutil.copy(RECORDINGS / "S4A03895_20190522_060000.wav", source / NAME)
    os.utime(source / NAME, ns=(1, 1))  # a new mtime even on a coarse clock
    after = Decoded(tmp_path / "cache", params=params).samples(store, NAME)
    assert np.array_equal(after, load_samples(store, NAME, params=params))
    assert after.shape != before.shape
    # another analysis rate is another file
    other = Decoded(tmp_path / "cache", params=Params(sample_rate=16000)).samples(store, NAME)
    assert other.shape[0] != after.shape[0]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3


def test_a_bad_recording_raises_and_nothing_is_kept(tmp_path, source):
    (source / "bad.wav").write_bytes(b"RIFF not really a wave file")
    decoded = Decoded(tmp_path / "cache", params=Params())
    for _ in range(2):
        with pytest.raises(EchoCamError):
            decoded.samples(LocalStore(source), "bad.wav")
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_default_folder_goes_with_the_run_and_off_keeps_nothing(tmp_path, source):
    params = Params()
    with decoded_for("", params=params) as decoded:
        decoded.samples(LocalStore(source), NAME)
        scratch = decoded.folder
        assert len(list(scratch.glob("*.npy"))) == 1
    assert not scratch.exists()
    store = CountingStore(source)
    with decoded_for("off", params=params) as decoded:
        for _ in range(2):
            decoded.samples(store, NAME)
    assert decoded.folder is None and store.gets == [NAME, NAME]
    with decoded_for(str(tmp_path / "kept"), params=params) as decoded:
        decoded.samples(LocalStore(source), NAME)
    assert len(list((tmp_path / "kept").glob("*.npy"))) == 1


def test_training_windows_are_the_same_with_the_cache(tmp_path, source):
    """Two epochs of augmented windows, drawn with and without the cache, equal bit for bit."""
    params = Params()
    examples = [Example(NAME, 0), Example(NAME, 1, 2.0, 9.0)]

    def windows(decoded):
        store = CountingStore(source)
        with ThreadPoolExecutor(2) as pool:
            loader = Loader(
                store, examples, params=params, augment=Augment(), pool=pool, batch_size=2,
                seed=3, decoded=decoded,
            )  # fmt: skip
            got = [w.samples for e in (1, 2) for batch in loader.epoch([0, 1], epoch=e)
                   for w in batch]  # fmt: skip
        return got, store.gets

    plain, plain_gets = windows(None)
    cached, cached_gets = windows(Decoded(tmp_path / "cache", params=params))
    assert len(plain) == 4 and len(plain_gets) == 4
    assert len(cached_gets) == 1  # one recording, read once
    for a, b in zip(plain, cached, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(plain[0], plain[2])  # epochs draw other windows
