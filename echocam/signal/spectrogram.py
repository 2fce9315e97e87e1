"""Mel power spectrogram in dB, batched on any device (matches librosa's defaults).

Two kernels compute the same numbers.  On a GPU: ``torch.stft`` and one dense mel product over
the batch.  On the CPU, where the batch's framed signal alone (b x 552 x 2048 floats) is far
larger than the caches and every large temporary page-faults afresh, a window is done in slices
of frames that stay in cache: pocketfft's real FFT (``scipy.fft``), the power, and the mel
product restricted to the bins each block of bands touches (the Slaney filterbank has ~2,000
non-zero weights of 266,500).  ``benchmarks/bench_host.py`` times both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from echocam.signal import melscale

#: frames per slice of the CPU kernel: 128 x 2048 float32 frames and their spectrum (~2 MB) stay
#: in a core's cache, where smaller slices pay more calls and a whole window (552 frames) does
#: not fit (``benchmarks/bench_host.py`` times the kernel).
SLICE_FRAMES = 128
#: blocks of consecutive mel bands in the CPU kernel's product, each over the bins it touches
MEL_BLOCKS = 16


def frame_count(samples: int, *, hop_length: int) -> int:
    """STFT frames of ``samples`` samples (``center=True``): one every ``hop_length``."""
    return 1 + samples // hop_length


class MelSpectrogramDB(nn.Module):
    """``power_to_db(melspectrogram(y), ref=max, top_db)`` per row of a batch of waveforms.

    Same STFT as ``librosa.stft`` (periodic Hann window, ``center=True``, zero padding), the
    same Slaney mel filterbank (``librosa.filters.mel``'s, from :mod:`echocam.signal.melscale`), and
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
        self.blocks = mel_blocks(self.mel_basis, MEL_BLOCKS)
        self.host_kernel = True  # False: torch.stft on the CPU too (the GPU kernel, for tests)

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
        if waves.device.type == "cpu" and self.host_kernel:
            return self._host(waves)
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
        return self._db_(torch.matmul(self.mel_basis, power))  # (b, n_mels, t)

    def _host(self, waves: torch.Tensor) -> torch.Tensor:
        """The CPU kernel: window by window, in slices of frames that stay in cache."""
        import scipy.fft  # deferred, as librosa: only the CPU kernel needs it

        b, n = waves.shape
        pad, frames = self.n_fft // 2, frame_count(n, hop_length=self.hop_length)
        padded = np.zeros((b, n + 2 * pad), np.float32)  # center=True, zero padding
        padded[:, pad : pad + n] = waves.detach().numpy()
        window = self.window.numpy()
        out = torch.zeros((b, self.mel_basis.shape[0], frames))  # bands above Nyquist stay 0
        power = np.empty((frames, self.n_fft // 2 + 1), np.float32)  # one window's, reused
        workers = torch.get_num_threads()
        for i in range(b):
            framed = np.lib.stride_tricks.sliding_window_view(padded[i], self.n_fft)
            framed = framed[:: self.hop_length]  # (frames, n_fft), a view
            for f0 in range(0, frames, SLICE_FRAMES):
                spec = scipy.fft.rfft(framed[f0 : f0 + SLICE_FRAMES] * window, workers=workers)
                pairs = spec.view(np.float32)  # (f, 2 * bins): re, im, re, im, ...
                np.square(pairs, out=pairs)
                np.add(pairs[:, 0::2], pairs[:, 1::2], out=power[f0 : f0 + SLICE_FRAMES])
            bins = torch.from_numpy(power)
            for rows, cols, weights in self.blocks:  # whole rows of out[i]: contiguous
                torch.matmul(weights, bins[:, cols].T, out=out[i, rows])
            self._db_(out[i : i + 1])
        return out

    def _db_(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel power (b, n_mels, t) → dB below each window's maximum, floored at ``top_db``;
        in place."""
        db = mel.clamp_min_(self.amin).log10_().mul_(10.0)
        db.sub_(db.amax(dim=(-2, -1), keepdim=True))  # ref=max, per window
        return torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - self.top_db, out=db)


def mel_blocks(mel_basis: torch.Tensor, n: int) -> list[tuple[slice, slice, torch.Tensor]]:
    """The filterbank (n_mels, bins) cut into ``n`` blocks of consecutive bands, each with the
    span of bins where its bands have weight: (band rows, bin columns, weights).  All-zero
    bands (above Nyquist) are in no block."""
    nonzero = (mel_basis != 0).numpy()
    edges = np.linspace(0, mel_basis.shape[0], n + 1).round().astype(int)
    blocks = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        cols = np.flatnonzero(nonzero[a:b].any(axis=0))
        if cols.size:
            rows, span = slice(a, b), slice(int(cols[0]), int(cols[-1]) + 1)
            blocks.append((rows, span, mel_basis[rows, span].contiguous()))
    return blocks
