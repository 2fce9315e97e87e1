"""The per-recording record: what was computed, from what, by which model, and where it went."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from echocam.keys import output_key

SCHEMA_VERSION = 1


@cache
def version() -> str:
    """The installed echo-cam version (read once: a metadata lookup costs ~1 ms)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _v

    try:
        return _v("echo-cam")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def base_record(
    *, source_key: str, size: int | None, etag: str | None, model: dict, fingerprint: str
) -> dict[str, Any]:
    """Fields every record has, ok or failed."""
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
        "record_key": output_key(source_key, "record.json"),
    }


def failed(base: dict[str, Any], *, code: str, message: str) -> dict[str, Any]:
    """``base`` as a failed record with a stable error ``code``."""
    return {**base, "status": "failed", "error_code": code, "error_message": message, "outputs": {}}


def dumps(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
