"""Chunk a stream without materialising it (``itertools.batched`` arrives in Python 3.12)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice


def chunked(items: Iterable, n: int) -> Iterator[list]:
    """Lists of ``n`` consecutive items from ``items``; the last may be shorter."""
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk
