"""Where seconds and Hertz fall on a run's images (pure arithmetic, no numpy, no librosa).

Image column c is the STFT frame centred ``c * hop / sample_rate`` seconds into the recording
(windows are stitched at ``rint(start * sample_rate / hop)``); image row r of a 260-row band
is mel band ``n_mels - 1 - r`` (row 0 the highest).  Band i's centre is edge i + 1 of
``n_mels + 2`` edges evenly spaced in Slaney mels from ``fmin`` to ``fmax``: what
``librosa.mel_frequencies`` gives (a test compares them), so rows land on the Hz of
:func:`echocam.explain.localise.band_centres`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_F_SP = 200.0 / 3  # Slaney: linear below 1 kHz ...
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0  # ... logarithmic above


def hz_to_mel(hz: float) -> float:
    if hz < _MIN_LOG_HZ:
        return hz / _F_SP
    return _MIN_LOG_MEL + math.log(hz / _MIN_LOG_HZ) / _LOGSTEP


def mel_to_hz(mel: float) -> float:
    if mel < _MIN_LOG_MEL:
        return mel * _F_SP
    return _MIN_LOG_HZ * math.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))


@dataclass(frozen=True)
class MelAxis:
    n_mels: int
    fmin: float
    fmax: float

    @classmethod
    def of(cls, params: dict) -> MelAxis:
        return cls(int(params["n_mels"]), float(params["fmin"]), float(params["fmax"]))

    @property
    def _step(self) -> float:
        return (hz_to_mel(self.fmax) - hz_to_mel(self.fmin)) / (self.n_mels + 1)

    def centre_hz(self, band: int) -> float:
        """Centre of mel band ``band`` (0 the lowest)."""
        return mel_to_hz(hz_to_mel(self.fmin) + (band + 1) * self._step)

    def row(self, hz: float) -> float:
        """The (fractional) image row whose centre is at ``hz``; row r's centre is y = r + 0.5."""
        band = (hz_to_mel(hz) - hz_to_mel(self.fmin)) / self._step - 1
        return self.n_mels - 1 - band

    def ticks(self, candidates=(250, 500, 1000, 2000, 4000, 8000, 12000)) -> list[dict]:
        """Frequency ticks within the bands: ``{"hz", "y"}`` with y in pixels from the band top."""
        lo, hi = self.centre_hz(0), self.centre_hz(self.n_mels - 1)
        return [
            {"hz": hz, "y": round(self.row(hz) + 0.5, 2)} for hz in candidates if lo <= hz <= hi
        ]


@dataclass(frozen=True)
class TimeAxis:
    sample_rate: int
    hop_length: int

    @property
    def seconds_per_column(self) -> float:
        return self.hop_length / self.sample_rate

    def column(self, seconds: float) -> float:
        """The image x (pixels, column c's centre at c + 0.5) of ``seconds``."""
        return seconds / self.seconds_per_column + 0.5
