"""Decode audio bytes to mono float32 at the target rate, with typed errors for bad input."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from echocam.errors import EmptyInput, NonFinite, Silent, TooLarge, TooLong, TooShort, Undecodable

BLOCK_FRAMES = 1 << 20  # source frames read and resampled at a time (4 MB per channel):
# most field recordings (up to 23.8 s at 44.1 kHz) in one block, resampled in one call


@dataclass(frozen=True)
class Audio:
    """Decoded audio: ``samples`` is float32, shape (n,), at ``sample_rate`` Hz."""

    samples: np.ndarray
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    source_format: str

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def decode(
    data: bytes,
    *,
    sample_rate: int,
    min_samples: int,
    max_duration_s: float,
    max_bytes: int,
) -> Audio:
    """Decode WAV/FLAC/OGG/MP3 ``data`` to mono float32 resampled to ``sample_rate`` Hz.

    Channels are averaged; resampling is soxr_hq, librosa's ``res_type="soxr_hq"`` sample for
    sample (output length ``ceil(frames * ratio)``, as librosa fixes it).  The source is read
    in blocks of :data:`BLOCK_FRAMES` and resampled as a stream, so only the output is ever
    held whole (a 30-minute 44.1 kHz recording: 159 MB, not the 0.6 GB of decoding it at once).
    Raises an :class:`~echocam.errors.EchoCamError` subclass for empty, oversized,
    undecodable, too long (from the header, before decoding, and while decoding), non-finite,
    all-zero and too-short (fewer than ``min_samples`` after resampling) input.
    """
    if len(data) == 0:
        raise EmptyInput("object is empty (0 bytes)")
    if len(data) > max_bytes:
        raise TooLarge(f"object is {len(data)} bytes, above the cap of {max_bytes}")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels, fmt = f.samplerate, f.channels, f.format
            if f.frames > 0 and f.frames / rate > max_duration_s:
                raise TooLong(
                    f"duration {f.frames / rate:.1f} s exceeds the cap of {max_duration_s:g} s"
                )
            mono, frames = _read_mono(f, sample_rate=sample_rate, max_frames=max_duration_s * rate)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        # libsndfile names the BytesIO object (an address); keep only its reason
        reason = getattr(e, "error_string", None) or re.sub(r"^Error opening <[^>]*>: ", "", str(e))
        raise Undecodable(f"cannot decode audio: {reason}") from None
    if mono.shape[0] < min_samples:
        raise TooShort(
            f"{mono.shape[0]} samples at {sample_rate} Hz is shorter than one STFT frame "
            f"({min_samples} samples)"
        )
    return Audio(mono, sample_rate, rate, channels, fmt)


def _read_mono(f: sf.SoundFile, *, sample_rate: int, max_frames: float) -> tuple[np.ndarray, int]:
    """Every block of ``f`` mixed to mono and resampled: (samples (n,) float32, source frames).

    The checks on the whole recording (too long, non-finite, all zero) are made block by block.
    """
    rate = f.samplerate
    stream = None  # made at the first block that is not the last
    out = _Growing(_resampled_length(max(f.frames, 0), rate, sample_rate))
    frames, nonzero = 0, False
    while True:
        block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        frames += block.shape[0]
        if frames > max_frames:
            raise TooLong(f"duration {frames / rate:.1f} s exceeds {max_frames / rate:g} s")
        if not np.isfinite(block).all():
            raise NonFinite("decoded samples contain NaN or Inf")
        last = block.shape[0] < BLOCK_FRAMES
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        nonzero = nonzero or bool(mono.any())
        if rate == sample_rate:
            out.extend(mono)
        elif last and stream is None:
            # the whole recording in one block: soxr's one-shot call, which releases the GIL
            # throughout (a stream's making holds it, ~0.5 ms on a busy decoding pool)
            out.extend(soxr.resample(mono, rate, sample_rate, quality="soxr_hq"))
        else:
            if stream is None:
                stream = soxr.ResampleStream(
                    rate, sample_rate, 1, dtype="float32", quality="soxr_hq"
                )
            out.extend(stream.resample_chunk(mono, last=last))
        if last:
            break
    if frames == 0:
        raise Undecodable("container holds no audio frames")
    if not nonzero:
        raise Silent("every sample is zero")
    # librosa.resample fixes the length to ceil(frames * ratio): pad with zeros or trim
    return out.result(_resampled_length(frames, rate, sample_rate)), frames


def _resampled_length(frames: int, rate: int, sample_rate: int) -> int:
    return frames if rate == sample_rate else math.ceil(frames * (sample_rate / rate))


class _Growing:
    """A float32 buffer filled block by block, sized by the header's length (grown if wrong)."""

    def __init__(self, capacity: int):
        # not zeroed (a pass over the buffer, GIL held): every sample is written, or zeroed
        # by result
        self.buf = np.empty(capacity, np.float32)
        self.n = 0

    def extend(self, x: np.ndarray) -> None:
        if self.n + x.shape[0] > self.buf.shape[0]:
            grown = np.empty(max(self.n + x.shape[0], self.buf.shape[0] * 3 // 2), np.float32)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : self.n + x.shape[0]] = x
        self.n += x.shape[0]

    def result(self, length: int) -> np.ndarray:
        """The first ``length`` samples, zero-padded past what was written; a copy only when
        the buffer was sized wrongly (a header claiming more frames than the data holds)."""
        self.buf[self.n : length] = 0
        if length == self.buf.shape[0]:
            return self.buf
        return self.buf[:length].copy()
