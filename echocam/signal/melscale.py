"""The Slaney mel scale and filterbank: ``librosa.filters.mel``'s numbers, without librosa.

librosa's functions, line for line (its ``htk=False``, ``norm="slaney"`` defaults), so the
filterbank and band centres are the same bits (tested against librosa).  Importing librosa
brings numba and scipy.signal: ~100 MB of every explaining process's memory, for two tables.
"""

from __future__ import annotations

import numpy as np

_F_SP = 200.0 / 3  # Hz per mel in the linear part (below 1 kHz)
_MIN_LOG_HZ = 1000.0  # where the log part begins
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0  # mels per log step above 1 kHz


def hz_to_mel(hz: float) -> float:
    """Slaney mels of ``hz``: linear below 1 kHz, logarithmic above."""
    if hz >= _MIN_LOG_HZ:
        return _MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOGSTEP
    return hz / _F_SP


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Hz of Slaney ``mels`` (n,)."""
    freqs = _F_SP * mels
    log_t = mels >= _MIN_LOG_MEL
    freqs[log_t] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_t] - _MIN_LOG_MEL))
    return freqs


def mel_frequencies(n: int, *, fmin: float, fmax: float) -> np.ndarray:
    """``n`` frequencies (Hz, float64) evenly spaced in mels from ``fmin`` to ``fmax``."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n))


def filterbank(*, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised triangular filters, float32 (n_mels, 1 + n_fft // 2).

    Band i rises from edge i to edge i + 1 and falls to edge i + 2 of ``n_mels + 2`` edges
    evenly spaced in mels; each is scaled to about constant energy per band.
    """
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights
