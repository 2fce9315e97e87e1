"""What the tests share that is not a fixture: where the recordings are, audio made on the fly."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent  # the repository
# ECHOCAM_TEST_RECORDINGS points elsewhere (a path that does not exist: a run without ../shared).
RECORDINGS = Path(
    os.environ.get("ECHOCAM_TEST_RECORDINGS") or ROOT.parent / "shared" / "data" / "recordings"
)
SAMPLES = ROOT / "samples"  # a few of the shared recordings, in the repository
SPECIES = ["Charadrius ruficapillus", "Chenonetta jubata", "Chlamydera nuchalis"]


def recordings() -> list[Path]:
    """The shared recordings; the repository's samples/ when ../shared is absent."""
    folder = RECORDINGS if RECORDINGS.is_dir() else SAMPLES
    return sorted(p for p in folder.glob("*") if p.suffix in (".wav", ".mp3"))


def recording(name: str) -> Path | None:
    """The recording ``name`` from the shared set, else from samples/; None where neither has it."""
    for folder in (RECORDINGS, SAMPLES):
        if (folder / name).is_file():
            return folder / name
    return None


def available(names: list[str]) -> list[str]:
    """Those of ``names`` that :func:`recording` finds (samples/ alone holds only some)."""
    return [n for n in names if recording(n) is not None]


def needs_recording(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        recording(name) is None, reason=f"{name} not in ../shared nor samples/"
    )


needs_shared = pytest.mark.skipif(
    not RECORDINGS.is_dir(), reason=f"shared recordings not found at {RECORDINGS}"
)


def wav_bytes(samples: np.ndarray, sr: int, *, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def chirp(seconds: float, sr: int, *, f0: float = 1000.0, f1: float = 6000.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / (2 * seconds)) * t)).astype(np.float32)
