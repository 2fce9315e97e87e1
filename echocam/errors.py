"""Typed errors with stable codes: a bad recording becomes data (a failed record), never a crash."""

from __future__ import annotations


class EchoCamError(Exception):
    """Base error; ``code`` is stable and appears in records and the manifest."""

    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class EmptyInput(EchoCamError):
    code = "empty"


class Undecodable(EchoCamError):
    code = "undecodable"


class TooShort(EchoCamError):
    code = "too_short"


class TooLong(EchoCamError):
    code = "too_long"


class TooLarge(EchoCamError):
    code = "too_large"


class NonFinite(EchoCamError):
    code = "non_finite"


class Silent(EchoCamError):
    code = "silent"


class UnsafeKey(EchoCamError):
    code = "unsafe_key"


class InvalidParams(EchoCamError):
    code = "invalid_params"


class DownloadFailed(EchoCamError):
    code = "download_failed"


class WeightsUnavailable(EchoCamError):
    """The weights cannot be loaded: offline with no cached ImageNet file (the message says
    where to put it), or a checkpoint that is missing or not one of echocam's."""

    code = "weights_unavailable"


class ParamsMismatch(EchoCamError):
    """A run asks for analysis parameters other than those its model was trained with (a species
    checkpoint's model-input parameters): it stops instead of running a mismatched model."""

    code = "params_mismatch"


#: Every code a record may carry, with its meaning (docs/reference/errors.md is generated from it).
ERROR_CODES: dict[str, str] = {
    "empty": "the object has zero bytes",
    "undecodable": "not audio libsndfile decodes (random bytes, text, broken header, ID3 only)",
    "too_short": "shorter than one STFT frame (n_fft samples) after resampling",
    "too_long": "longer than max_duration_s",
    "too_large": "object larger than max_bytes",
    "non_finite": "decoded samples contain NaN or Inf",
    "silent": "every sample is zero: nothing to explain, so it fails (a recorder fault worth "
    "seeing in the manifest, not a warning lost in a log)",
    "unsafe_key": "source key cannot be mapped to an output key safely",
    "download_failed": "the source could not be read after retries (transient errors exhausted)",
    "timeout": "the task exceeded its soft time limit",
    "worker_lost": "the task crashed its worker process on every delivery (poison task)",
    "model_mismatch": "the worker's model differs from the run's model",
    "invalid_params": "the run's parameters ask what the model cannot answer: a --classes name "
    "it does not know, a --top-k above its number of classes. `echocam run` and `echocam produce` "
    "refuse such parameters before writing anything; a run enqueued with --model-sha256 gets "
    "these records",
    "internal": "an unexpected error; the message has the details",
}

#: Codes that say nothing about the input: a later run retries them instead of skipping.
TRANSIENT_CODES = frozenset(
    {"download_failed", "timeout", "worker_lost", "model_mismatch", "internal"}
)


def from_code(code: str, message: str) -> EchoCamError:
    """The typed error for ``code`` (the base class for codes without one of their own)."""
    for cls in EchoCamError.__subclasses__():
        if cls.code == code:
            return cls(message)
    return EchoCamError(message)
