"""The front end every model input goes through: audio → windows → mel dB → magma image → input.

One implementation for explaining and for training, so a species model sees at inference exactly
what it was trained on.  Training adds its augmentation around these steps (on the waveforms,
and on the dB before :meth:`FrontEnd.images`); the steps themselves never change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from echocam.settings import Params
from echocam.signal import audio, colormaps, windows
from echocam.signal.image import model_image, normalise, spectrogram_levels
from echocam.signal.spectrogram import MelSpectrogramDB


@dataclass(frozen=True)
class Windowed:
    """A decoded recording and its windows: ``starts`` (w,) samples, each ``length`` long."""

    audio: audio.Audio
    starts: np.ndarray
    length: int

    def window(self, j: int) -> np.ndarray:
        """Samples (length,) of window ``j``: a view, not a copy."""
        return self.audio.samples[self.starts[j] : self.starts[j] + self.length]


def windowed(data: bytes, *, params: Params) -> Windowed:
    """Decode ``data`` (any format the decoder takes) and cut it into its analysis windows.

    A recording shorter than one window is one window of its own length.  Raises an
    :class:`~echocam.errors.EchoCamError` with a stable code for bad input.
    """
    decoded = audio.decode(data, **params.decode_options())
    n = decoded.samples.shape[0]
    length = min(params.window_samples, n)
    starts = windows.window_starts(n, window=length, hop=params.hop_samples)
    return Windowed(decoded, starts, length)


class FrontEnd:
    """Waveforms (b, n) on ``device`` → dB (b, n_mels, t) → RGB (b, n_mels, t, 3) → input.

    The model input is the RGB image resized to ``params.input_size`` squared (uint8, what
    :func:`model_image` gives; 0: not resized, (b, 3, n_mels, t)) and ImageNet-normalised
    (float32).
    """

    def __init__(self, params: Params, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.input_size = params.input_size
        self.spectrogram = MelSpectrogramDB.from_params(params).to(self.device)
        self.magma = colormaps.table("magma", self.device)

    def db(self, waves: torch.Tensor) -> torch.Tensor:
        """Mel dB (b, n_mels, t) of waveforms (b, n)."""
        return self.spectrogram(waves)

    def images(self, db: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(RGB (b, n_mels, t, 3), model image (b, 3, s, s)), both uint8, of dB (b, m, t)."""
        return self.colours(db)[1:]

    def colours(self, db: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(magma rows (b, n_mels, t) int32, RGB, model image) of dB (b, m, t): the rows are
        what an overlay blends over (:func:`echocam.explain.render.overlay`)."""
        levels = spectrogram_levels(db)
        rgb = colormaps.lookup(levels, self.magma)
        return levels, rgb, model_image(rgb, size=self.input_size)

    def model_input(self, image: torch.Tensor) -> torch.Tensor:
        """The normalised network input of a uint8 model image; channels-last on CUDA."""
        x = normalise(image)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        """The network input (b, 3, s, s) of waveforms (b, n): every step, no augmentation."""
        return self.model_input(self.images(self.db(waves))[1])
