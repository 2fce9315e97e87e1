"""Reading a run for review: its run.json, its detections table and its verdicts (the I/O)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from echocam.bucket.manifest import DETECTIONS_PARQUET
from echocam.bucket.reviews import Reviews
from echocam.bucket.runs import RUN_NAME
from echocam.bucket.storage import Store, open_store, read_json
from echocam.errors import InvalidParams

#: The detections-table columns review needs.
COLUMNS = (
    "source_key", "begin_s", "end_s", "class_name", "probability",
    "box_begin_s", "box_end_s", "box_low_hz", "box_high_hz",
    "call_begin_s", "call_end_s", "call_low_hz", "call_high_hz",
)  # fmt: skip


@dataclass
class ReviewRun:
    """A run's store and run.json."""

    store: Store
    run: dict[str, Any]

    @property
    def input(self) -> str | None:
        """The run's input URI (the source its keys are relative to)."""
        return self.run.get("input")

    def reviews(self) -> Reviews:
        """Every verdict stored under the run's ``_reviews/``, merged."""
        return Reviews.load(self.store)

    def detections(self, *, columns: Sequence[str] = COLUMNS) -> list[dict[str, Any]]:
        """The rows of the run's detections.parquet (``columns`` only)."""
        import pyarrow.parquet as pq

        try:
            data, _ = self.store.get(DETECTIONS_PARQUET)
        except FileNotFoundError:
            raise InvalidParams(
                f"{self.store.uri}: no {DETECTIONS_PARQUET} (write it with `echocam manifest`)"
            ) from None
        return pq.read_table(io.BytesIO(data), columns=list(columns)).to_pylist()

    def probabilities(self) -> dict[str, list[float]]:
        """Per class, the probabilities of its detections in the table."""
        out: dict[str, list[float]] = {}
        for d in self.detections(columns=("class_name", "probability")):
            out.setdefault(d["class_name"], []).append(d["probability"])
        return out


def open_run(uri: str, *, client_factory=None) -> ReviewRun:
    """The run under ``uri`` (directory or s3://bucket/prefix); InvalidParams without run.json."""
    store = open_store(uri, client_factory=client_factory)
    run = read_json(store, RUN_NAME)
    if run is None:
        raise InvalidParams(f"{uri}: no {RUN_NAME}: not a run")
    return ReviewRun(store, run)
