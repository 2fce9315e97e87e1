"""The per-recording record: what was computed, from what, by which model, and where it went.

One builder for every record (:func:`new`, then :func:`failed` or :func:`succeeded`, then
:func:`stamped` when it is written) and one shape for readers (:class:`Record`).  A record is
plain JSON, stored as ``<output dir of the source>/record.json``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal, NotRequired, Protocol, TypedDict

from echocam.bucket.keys import output_key

SCHEMA_VERSION = 1
RECORD_NAME = "record.json"


class DecodedAudio(Protocol):
    """What a record tells of a decoded recording (``echocam.signal.audio.Audio`` has it): the
    producer reads records and never loads the audio stack."""

    @property
    def duration_s(self) -> float: ...

    source_sample_rate: int
    source_channels: int
    source_format: str


class Prediction(TypedDict):
    class_id: int
    class_name: str
    probability: float
    logit: NotRequired[float]  # the explained classes have these and their evidence (s, Hz)
    peak_time_s: NotRequired[float]
    peak_freq_hz: NotRequired[float]
    box_begin_s: NotRequired[float]
    box_end_s: NotRequired[float]
    box_low_hz: NotRequired[float]
    box_high_hz: NotRequired[float]
    call_begin_s: NotRequired[float | None]  # the call box; None where no call was found
    call_end_s: NotRequired[float | None]
    call_low_hz: NotRequired[float | None]
    call_high_hz: NotRequired[float | None]


class WindowRecord(TypedDict):
    start_s: float
    predictions: list[Prediction]  # the top-k, best first
    explained: list[Prediction]  # the classes whose CAMs were computed, with logits


class Outputs(TypedDict, total=False):
    """The keys of the files written (``Params.outputs``): a kind not written is absent."""

    spectrogram: str
    overlay: str  # overlay.jpg, overlay.webp or overlay.png (Params.overlay_format)
    cam: str
    selections: str  # Raven Pro selection table
    labels: str  # Audacity label track
    embeddings: str  # embeddings.parquet
    inputs: list[str]  # with save_inputs
    # A recording wider than outputs.TILE_COLUMNS: its images' tiles in time order (then
    # "spectrogram" and "overlay" name the first ones)
    spectrogram_tiles: NotRequired[list[str]]
    overlay_tiles: NotRequired[list[str]]


class Record(TypedDict):
    """``record.json``.  Every record has the fields up to ``record_key``; an ok record the rest."""

    schema_version: int
    source_key: str
    source_size: int | None
    source_etag: str | None
    status: Literal["ok", "failed"]
    error_code: str | None
    error_message: str | None
    model: dict[str, Any]  # LoadedModel.identity
    fingerprint: str
    echocam_version: str
    record_key: str
    outputs: Outputs | dict[str, Any]  # empty for a failed record
    run_id: NotRequired[str]  # set when written (stamped)
    finished_at: NotRequired[str]
    duration_s: NotRequired[float]
    source_sample_rate: NotRequired[int]
    source_channels: NotRequired[int]
    source_format: NotRequired[str]
    sample_rate: NotRequired[int]
    window_seconds: NotRequired[float]
    n_windows: NotRequired[int]
    windows: NotRequired[list[WindowRecord]]
    top_predictions: NotRequired[list[Prediction]]  # mean window probability, best first
    image_sizes: NotRequired[dict[str, list[int]]]  # name → [height, width]
    tile_columns: NotRequired[int]  # the width of each tile (the last narrower), when tiled
    timings_s: NotRequired[dict[str, float]]  # decode, compute, encode


@cache
def version() -> str:
    """The installed echo-cam version (read once: a metadata lookup is slow)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _v

    try:
        return _v("echo-cam")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def record_key(source_key: str) -> str:
    """Relative key of ``source_key``'s record."""
    return output_key(source_key, RECORD_NAME)


def new(
    *, source_key: str, size: int | None, etag: str | None, model: dict, fingerprint: str
) -> Record:
    """A record with the fields that do not depend on the outcome (status still ``failed``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "source_key": source_key,
        "source_size": size,
        "source_etag": etag,
        "status": "failed",
        "error_code": None,
        "error_message": None,
        "model": model,
        "fingerprint": fingerprint,
        "echocam_version": version(),
        "record_key": record_key(source_key),
        "outputs": {},
    }


def failed(base: Record, *, code: str, message: str) -> Record:
    """``base`` as a failed record with a stable error ``code``."""
    return {**base, "status": "failed", "error_code": code, "error_message": message, "outputs": {}}


def succeeded(
    base: Record,
    *,
    audio: DecodedAudio,
    sample_rate: int,
    window_seconds: float,
    windows: list[WindowRecord],
    top_predictions: list[Prediction],
    outputs: Outputs,
    image_sizes: dict[str, list[int]],
) -> Record:
    """``base`` as an ok record: the decoded ``audio``'s description and what was computed."""
    return {
        **base,
        "status": "ok",
        "error_code": None,
        "error_message": None,
        "duration_s": round(audio.duration_s, 6),
        "source_sample_rate": audio.source_sample_rate,
        "source_channels": audio.source_channels,
        "source_format": audio.source_format,
        "sample_rate": sample_rate,
        "window_seconds": round(window_seconds, 6),
        "n_windows": len(windows),
        "windows": windows,
        "top_predictions": top_predictions,
        "outputs": outputs,
        "image_sizes": image_sizes,
    }


def stamped(record: Record, *, run_id: str) -> Record:
    """``record`` as written by run ``run_id``, now."""
    return {**record, "run_id": run_id, "finished_at": now_iso()}


def prediction(class_id: int, probability: float, names, logit: float | None = None) -> Prediction:
    """A class with its name (from ``names``), rounded probability and, if given, logit."""
    p: Prediction = {
        "class_id": int(class_id),
        "class_name": names[class_id],
        "probability": round(float(probability), 6),
    }
    if logit is not None:
        p["logit"] = round(float(logit), 5)
    return p


def dumps(record: Record) -> bytes:
    return (json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
