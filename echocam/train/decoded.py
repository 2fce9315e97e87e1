"""Decoded recordings on local disk: each fetched, decoded and resampled once, then read as bytes.

Training draws a window of a recording again and again (every epoch, every mix-in); decoding its
file each time (libsndfile or the MP3 decoder, then soxr) cost the loader 3.9 CPU-ms per window
for 48-kHz clips, against 0.8 read from here (``benchmarks/bench_train.py``, 2-core EPYC).
:class:`Decoded` keeps the samples inference would decode (:func:`load_samples`) as ``.npy``
files, memory-mapped: a window is a slice of a file the page cache already holds.

A file's name is a digest of the store, the key, the object's version (its ETag; a local file's
size and modification time) and the parameters decoding reads, so a recording changed in the
store, or decoded at another rate, gets a new file and nothing stale is ever read.  The version
is asked once per recording per run.  Files are written whole and renamed into place: threads
and processes may share a folder.  Nothing here deletes old files: a temporary folder per run
(the default) goes with the run; a folder kept between runs is the user's to clear.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from echocam.bucket.storage import Store
from echocam.settings import Params
from echocam.signal.frontend import windowed

#: Bumped when the decoder's output changes for the same bytes and parameters.
FORMAT = 1


def load_samples(store: Store, key: str, *, params: Params) -> np.ndarray:
    """The decoded samples (n,) float32 of ``key``, exactly as inference decodes them."""
    data, _ = store.get(key, max_bytes=params.max_bytes)
    return windowed(data, params=params).audio.samples


class Decoded:
    """The decoded samples (n,) float32 of recordings, kept in ``folder`` (None: decoded at
    every call, nothing kept)."""

    def __init__(self, folder: str | os.PathLike | None, *, params: Params):
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.params = params
        # (store, key) → its file this run, and the lock that lets one thread decode it
        self._files: dict[tuple[str, str], tuple[Path, threading.Lock]] = {}
        self._lock = threading.Lock()

    def samples(self, store: Store, key: str) -> np.ndarray:
        """``key``'s samples, as :func:`load_samples` decodes them (kept: read-only and
        memory-mapped).  Decoding errors raise, and nothing is kept of them."""
        if self.folder is None:
            return load_samples(store, key, params=self.params)
        path, lock = self._file(store, key)
        with lock:  # the pool's other threads wait for this recording, not decode it again
            try:
                return np.load(path, mmap_mode="r")
            except FileNotFoundError:
                pass
            samples = load_samples(store, key, params=self.params)
            tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as f:
                    np.save(f, samples)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            return samples

    def _file(self, store: Store, key: str) -> tuple[Path, threading.Lock]:
        found = self._files.get((store.uri, key))
        if found is None:
            p = self.params
            what = [FORMAT, store.uri, key, store.version(key), p.sample_rate, p.max_duration_s,
                    p.max_bytes]  # fmt: skip
            digest = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]
            with self._lock:  # two threads that both asked the version keep the first's lock
                found = self._files.setdefault(
                    (store.uri, key), (self.folder / f"{digest}.npy", threading.Lock())
                )
        return found


@contextlib.contextmanager
def decoded_for(folder: str, *, params: Params) -> Iterator[Decoded]:
    """The :class:`Decoded` of ``echocam train --decode-cache``: ``folder`` kept; '' a temporary
    folder removed on leaving; 'off' none (every window decodes its recording)."""
    if folder == "off":
        yield Decoded(None, params=params)
    elif folder:
        yield Decoded(folder, params=params)
    else:
        with tempfile.TemporaryDirectory(prefix="echocam-decoded-") as scratch:
            yield Decoded(scratch, params=params)
