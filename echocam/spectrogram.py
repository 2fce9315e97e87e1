"""Mel power spectrogram in dB, batched in torch on any device (matches librosa's defaults)."""

from __future__ import annotations

import torch
from torch import nn

from echocam import melscale


class MelSpectrogramDB(nn.Module):
    """``power_to_db(melspectrogram(y), ref=max, top_db)`` per row of a batch of waveforms.

    Same STFT as ``librosa.stft`` (periodic Hann window, ``center=True``, zero padding), the
    same Slaney mel filterbank (``librosa.filters.mel``'s, from :mod:`echocam.melscale`), and
    ``ref`` is each window's own maximum.  Input (b, n) float32 samples; output
    (b, n_mels, 1 + n // hop_length).
    """

    def __init__(
        self,
        *,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        n_mels: int,
        fmin: float,
        fmax: float,
        top_db: float,
        amin: float = 1e-10,
    ):
        super().__init__()
        # The default fmax (13 kHz) lies above Nyquist at 22050 Hz: the top bands are empty.
        # They stay, for parity with librosa; they sit at the top_db floor.
        mel = melscale.filterbank(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        self.register_buffer("mel_basis", torch.from_numpy(mel), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.n_fft, self.hop_length, self.top_db, self.amin = n_fft, hop_length, top_db, amin

    @classmethod
    def from_params(cls, params) -> MelSpectrogramDB:
        """The spectrogram that ``params`` (an ``echocam.settings.Params``) describes."""
        return cls(
            sample_rate=params.sample_rate,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            n_mels=params.n_mels,
            fmin=params.fmin,
            fmax=params.fmax,
            top_db=params.top_db,
        )

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        stft = torch.stft(
            waves,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = stft.real.square().addcmul_(stft.imag, stft.imag)  # one temporary, not three
        mel = torch.matmul(self.mel_basis, power)  # (b, n_mels, t)
        db = 10.0 * torch.log10(mel.clamp_min(self.amin))
        db = db - db.amax(dim=(-2, -1), keepdim=True)  # ref=max, per window
        return torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - self.top_db)
