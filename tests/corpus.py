"""A corpus of bad, odd and valid inputs, built in memory: (key, bytes, expected code or "ok")."""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

from tests.helpers import chirp, wav_bytes

#: Caps the corpus run uses, so the "too long" and "too large" cases stay small.
MAX_DURATION_S = 60.0
MAX_BYTES = 3_000_000


def _truncated_data(seconds: float = 1.0) -> bytes:
    """A WAV whose header claims twice the data that follows it."""
    full = wav_bytes(chirp(seconds, 22050), 22050)
    return full[: 44 + (len(full) - 44) // 2]


def _id3_only() -> bytes:
    """An MP3 file that is nothing but an ID3v2.4 tag (a title frame and padding)."""
    frame = b"TIT2" + struct.pack(">I", 6) + b"\x00\x00" + b"\x03title"
    frame = frame[:10] + frame[10:]
    size = len(frame) + 100
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x04\x00\x00" + syncsafe + frame + b"\x00" * 100


def _multichannel(channels: int, sr: int, seconds: float) -> bytes:
    y = np.stack([chirp(seconds, sr, f0=500 + 300 * c) for c in range(channels)], axis=1)
    return wav_bytes(y, sr)


def _encoded(fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, chirp(2.0, 22050), 22050, format=fmt, subtype=subtype)
    return buf.getvalue()


def corpus() -> list[tuple[str, bytes, str]]:
    y = chirp(2.0, 22050)
    nan = y.copy()
    nan[100] = np.nan
    inf = y.astype(np.float64)
    inf[200] = np.inf
    rng = np.random.default_rng(11)
    return [
        ("bad/empty.wav", b"", "empty"),
        ("bad/random-bytes.wav", rng.bytes(6000), "undecodable"),
        ("bad/truncated-header.wav", wav_bytes(y, 22050)[:20], "undecodable"),
        ("bad/text.wav", b"RIFF? no: this is a text file\n" * 30, "undecodable"),
        ("bad/id3-only.mp3", _id3_only(), "undecodable"),
        ("bad/nan.wav", wav_bytes(nan, 22050, subtype="FLOAT"), "non_finite"),
        ("bad/inf.wav", wav_bytes(inf, 22050, subtype="DOUBLE"), "non_finite"),
        ("bad/all-zero.wav", wav_bytes(np.zeros(22050, np.float32), 22050), "silent"),
        ("bad/one-frame-short.wav", wav_bytes(chirp(0.05, 22050), 22050), "too_short"),
        ("bad/too-long.wav", wav_bytes(chirp(MAX_DURATION_S + 10, 8000), 8000), "too_long"),
        ("bad/too-large.wav", wav_bytes(chirp(40.0, 48000), 48000), "too_large"),
        ("odd/claims-more-data.wav", _truncated_data(), "ok"),
        ("odd/pcm-u8.wav", wav_bytes(y, 22050, subtype="PCM_U8"), "ok"),
        ("odd/pcm-24.wav", wav_bytes(y, 22050, subtype="PCM_24"), "ok"),
        ("odd/float32.wav", wav_bytes(y, 22050, subtype="FLOAT"), "ok"),
        ("odd/float64.wav", wav_bytes(y.astype(np.float64), 22050, subtype="DOUBLE"), "ok"),
        ("odd/six-channels.wav", _multichannel(6, 22050, 2.0), "ok"),
        ("odd/8k.wav", wav_bytes(chirp(2.0, 8000, f1=3500), 8000), "ok"),
        ("odd/192k.wav", wav_bytes(chirp(2.0, 192000), 192000), "ok"),
        ("odd/song.flac", _encoded("FLAC", "PCM_16"), "ok"),
        ("odd/song.ogg", _encoded("OGG", "VORBIS"), "ok"),
        ("keys/with spaces/a recording.wav", wav_bytes(y, 22050), "ok"),
        ("keys/ünïcødé/鳥の声 ♪.wav", wav_bytes(y, 22050), "ok"),
        ("keys/" + "long-name-" * 23 + ".wav", wav_bytes(y, 22050), "ok"),
    ]


#: Not audio by extension: the filter must skip it (no record, no manifest row).
SKIPPED = [("keys/readme.txt", b"not audio"), ("keys/image.png", b"\x89PNG\r\n")]
