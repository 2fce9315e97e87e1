"""Chunking a stream, and reading it ahead on a thread (the producer's source listing)."""

from __future__ import annotations

import threading
import time

import pytest

from echocam.bucket.chunking import chunked, chunked_ahead, read_ahead


def _counted(n: int, pulled: list[int], *, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise OSError(f"listing failed at {i}")
        pulled[0] += 1
        yield i


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "echocam-read-ahead"]


def test_chunked_ahead_gives_the_chunks_of_chunked_in_order():
    assert list(chunked_ahead(range(10), 3, depth=2)) == list(chunked(range(10), 3))
    assert list(chunked_ahead([], 3)) == []
    assert list(read_ahead(range(2500), batch=1000)) == list(range(2500))


def test_an_error_in_the_listing_reaches_the_consumer_after_the_chunks_before_it():
    got = []
    with pytest.raises(OSError, match="listing failed at 7"):
        for some in chunked_ahead(_counted(20, [0], fail_at=7), 3, depth=2):
            got.append(some)
    assert got == [[0, 1, 2], [3, 4, 5]]  # 6 was read, but its chunk never completed


def test_it_reads_at_most_depth_chunks_ahead_and_stops_with_its_consumer():
    pulled = [0]
    chunks = chunked_ahead(_counted(10_000, pulled), 10, depth=3)
    assert next(chunks) == list(range(10))
    deadline = time.monotonic() + 5
    while pulled[0] < 40 and time.monotonic() < deadline:  # 3 queued, one more held
        time.sleep(0.01)
    time.sleep(0.2)
    assert pulled[0] <= 50  # the chunk handed out, 3 queued and one waiting to be
    chunks.close()
    deadline = time.monotonic() + 5
    while _reader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _reader_threads()
    assert pulled[0] <= 50
