"""Map source keys to output keys that can never escape the output prefix."""

from __future__ import annotations

import hashlib

from echocam.errors import UnsafeKey

_MAX_SEGMENT_BYTES = 200  # below every filesystem's 255-byte name limit, with room to spare
_MAX_KEY_BYTES = 900  # S3 keys are at most 1024 bytes; leave room for the prefix and file name


def _encode_segment(seg: str) -> str:
    if seg in ("", ".", ".."):
        # Never a path step: "%" is always encoded below, so these cannot collide.
        return {"": "%2F", ".": "%2E", "..": "%2E%2E"}[seg]
    out = "".join(
        f"%{ord(c):02X}" if ord(c) < 32 or ord(c) == 127 or c in "%\\" else c for c in seg
    )
    if len(out.encode()) > _MAX_SEGMENT_BYTES:
        digest = hashlib.sha256(seg.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        out = out.encode()[: _MAX_SEGMENT_BYTES - 17].decode("utf-8", "ignore") + "~" + digest
    return out


def output_dir(source_key: str) -> str:
    """Relative directory of a recording's outputs: ``source_key`` with every segment made safe.

    Leading or doubled ``/``, ``.`` and ``..`` segments, control characters, ``%`` and ``\\``
    are percent-encoded (an injective mapping, so two sources never share outputs); overlong
    segments are shortened with a hash.  The result never starts with ``/`` and holds no
    ``.``/``..`` segment, so joined under a prefix it stays under that prefix.
    """
    if not source_key:
        raise UnsafeKey("empty source key")
    out = "/".join(_encode_segment(s) for s in source_key.split("/"))
    if len(out.encode()) > _MAX_KEY_BYTES:
        digest = hashlib.sha256(source_key.encode("utf-8", "surrogatepass")).hexdigest()
        out = out.encode()[: _MAX_KEY_BYTES - 70].decode("utf-8", "ignore").rstrip("/")
        out = f"{out}~{digest}"
    return out


def output_key(source_key: str, name: str) -> str:
    """Relative key of output ``name`` (e.g. ``cam.npz``) for ``source_key``."""
    return f"{output_dir(source_key)}/{name}"


def join(prefix: str, key: str) -> str:
    """``prefix/key`` with exactly one separator; ``prefix`` may be empty."""
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key
