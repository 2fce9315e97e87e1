"""Chunk a stream without materialising it (``itertools.batched`` arrives in Python 3.12), and
read a bounded number of chunks ahead on a thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from itertools import islice


def chunked(items: Iterable, n: int) -> Iterator[list]:
    """Lists of ``n`` consecutive items from ``items``; the last may be shorter."""
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def chunked_ahead(items: Iterable, n: int, *, depth: int = 2) -> Iterator[list]:
    """:func:`chunked`, pulled on a thread at most ``depth`` lists ahead of the consumer.

    For listings: the next pages arrive while this one is used.  The thread stops soon after
    the consumer does; an error in it is raised in the consumer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(x) -> bool:
        while not stop.is_set():
            try:
                buffer.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for some in chunked(items, n):
                if not offer(some):
                    return
            offer(_END)
        except BaseException as e:  # handed to the consumer
            offer(e)

    threading.Thread(target=fill, daemon=True, name="echocam-read-ahead").start()
    try:
        while (got := buffer.get()) is not _END:
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()


def read_ahead(items: Iterable, *, batch: int = 1000, depth: int = 2) -> Iterator:
    """``items`` pulled on a thread, at most ``depth`` lists of ``batch`` ahead of the consumer."""
    for some in chunked_ahead(items, batch, depth=depth):
        yield from some


_END = object()
