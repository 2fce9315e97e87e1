"""Map source keys to output keys that can never escape the output prefix."""

from __future__ import annotations

import hashlib

from echocam.errors import UnsafeKey

#: S3 keys are at most 1024 bytes: what a source key becomes leaves room for the prefix and name.
MAX_KEY_BYTES = 900
#: Filesystems take names of at most 255 bytes (a local store writes every key component as one).
NAME_BYTES = 255
_MAX_COMPONENT_BYTES = 200  # an output key's: well below NAME_BYTES; longer ones end in a hash


def _encode_component(part: str) -> str:
    if part in ("", ".", ".."):
        # Never a path step: "%" is always encoded below, so these cannot collide.
        return {"": "%2F", ".": "%2E", "..": "%2E%2E"}[part]
    out = "".join(
        f"%{ord(c):02X}" if ord(c) < 32 or ord(c) == 127 or c in "%\\" else c for c in part
    )
    if len(out.encode()) > _MAX_COMPONENT_BYTES:
        digest = hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        out = out.encode()[: _MAX_COMPONENT_BYTES - 17].decode("utf-8", "ignore") + "~" + digest
    return out


def output_dir(source_key: str) -> str:
    """Relative directory of a recording's outputs: ``source_key`` with every component made safe.

    Leading or doubled ``/``, ``.`` and ``..`` components, control characters, ``%`` and ``\\``
    are percent-encoded (an injective mapping, so two sources never share outputs); overlong
    components are shortened with a hash.  The result never starts with ``/`` and holds no
    ``.``/``..`` component, so joined under a prefix it stays under that prefix.
    """
    if not source_key:
        raise UnsafeKey("empty source key")
    out = "/".join(_encode_component(s) for s in source_key.split("/"))
    if len(out.encode()) > MAX_KEY_BYTES:
        digest = hashlib.sha256(source_key.encode("utf-8", "surrogatepass")).hexdigest()
        out = out.encode()[: MAX_KEY_BYTES - 70].decode("utf-8", "ignore").rstrip("/")
        out = f"{out}~{digest}"
    return out


def output_key(source_key: str, name: str) -> str:
    """Relative key of output ``name`` (e.g. ``cam.npz``) for ``source_key``."""
    return f"{output_dir(source_key)}/{name}"


def join(prefix: str, key: str) -> str:
    """``prefix/key`` with exactly one separator; ``prefix`` may be empty."""
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key
