"""Where the evidence is: a display map's peak and evidence box, in seconds and Hertz.

Pure maths on arrays.  A display map (see :func:`echocam.cam.display_maps`) has the shape of its
window's spectrogram, (n_mels, frames): row 0 is the highest mel band (the image is drawn with
low frequencies at the bottom) and column c is the STFT frame centred ``c * hop_length`` samples
after the window's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from scipy import ndimage

from echocam import melscale


@dataclass(frozen=True)
class Axes:
    """The time (s) and frequency (Hz) of every cell of a window's display map."""

    times_s: np.ndarray  # (frames,) seconds from the window's start
    freqs_hz: np.ndarray  # (n_mels,) centre frequency of each row, row 0 the highest

    @classmethod
    def of(
        cls,
        *,
        frames: int,
        sample_rate: int,
        hop_length: int,
        n_mels: int,
        fmin: float,
        fmax: float,
    ) -> Axes:
        """The axes of a (n_mels, frames) map at these analysis parameters."""
        return cls(
            times_s=np.arange(frames) * (hop_length / sample_rate),
            freqs_hz=band_centres(n_mels=n_mels, fmin=fmin, fmax=fmax)[::-1].copy(),
        )

    @classmethod
    def for_params(cls, params, *, frames: int) -> Axes:
        """The axes of a window of ``frames`` at ``params`` (an ``echocam.settings.Params``)."""
        return cls.of(
            frames=frames,
            sample_rate=params.sample_rate,
            hop_length=params.hop_length,
            n_mels=params.n_mels,
            fmin=params.fmin,
            fmax=params.fmax,
        )


@cache
def band_centres(*, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Centre frequency (Hz) of each mel band, lowest first: those of ``librosa.filters.mel``.

    The Slaney filterbank's band i is a triangle from edge i to edge i + 2 of ``n_mels + 2``
    mel-spaced edges; its centre is edge i + 1.
    """
    centres = melscale.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax)[1:-1]
    centres.setflags(write=False)
    return centres


@dataclass(frozen=True)
class Evidence:
    """A map's peak and the box around it, in seconds (from the recording's start) and Hz."""

    peak_time_s: float
    peak_freq_hz: float
    box_begin_s: float
    box_end_s: float
    box_low_hz: float
    box_high_hz: float


def evidence(
    display_map: np.ndarray, *, axes: Axes, offset_s: float = 0.0, threshold: float = 0.5
) -> Evidence:
    """The peak of ``display_map`` (n_mels, frames) and its evidence box.

    The box bounds the connected region (4-connected cells) around the peak where the map is
    ``>= threshold`` (times of its first and last frames, centres of its lowest and highest
    bands).  ``offset_s`` is the window's start in the recording.  A constant map (no evidence
    anywhere) peaks at its first cell and boxes the whole window, as the threshold selects all.
    """
    maps = torch.from_numpy(np.ascontiguousarray(display_map))[None]
    peak, mask = peaks_and_masks(maps, threshold=threshold)
    return region_evidence(mask[0].numpy(), int(peak[0]), axes=axes, offset_s=offset_s)


def peaks_and_masks(maps: torch.Tensor, *, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Display maps (..., n_mels, frames) on any device → (peak (...) int64, the flat index of each
    map's first maximum; mask (..., n_mels, frames) bool, where the map is ``>= threshold``, or
    at its peak where the peak is below).  The batched half of :func:`evidence`, on the device
    that made the maps; :func:`region_evidence` finishes it on the host."""
    top, peak = maps.flatten(-2).max(dim=-1)  # first maximum, as np.argmax
    level = top.clamp_max(threshold)[..., None, None]
    return peak, maps >= level


def region_evidence(mask: np.ndarray, peak: int, *, axes: Axes, offset_s: float) -> Evidence:
    """The evidence of one map from its ``mask`` (n_mels, frames) bool and the flat index of its
    ``peak`` (see :func:`peaks_and_masks`): the box of the mask's connected region there."""
    row, col = np.unravel_index(peak, mask.shape)
    # Label only the rows and columns the mask touches: often a small part of the map.
    r0, r1 = _span(mask.any(axis=1))
    c0, c1 = _span(mask.any(axis=0))
    labels, _ = ndimage.label(mask[r0:r1, c0:c1])
    rows, cols = ndimage.find_objects(labels)[labels[row - r0, col - c0] - 1]
    return Evidence(
        peak_time_s=float(offset_s + axes.times_s[col]),
        peak_freq_hz=float(axes.freqs_hz[row]),
        box_begin_s=float(offset_s + axes.times_s[c0 + cols.start]),
        box_end_s=float(offset_s + axes.times_s[c0 + cols.stop - 1]),
        box_low_hz=float(axes.freqs_hz[r0 + rows.stop - 1]),
        box_high_hz=float(axes.freqs_hz[r0 + rows.start]),
    )


def _span(any_: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of the True entries of a 1-d bool array (which has one: the peak)."""
    hits = np.flatnonzero(any_)
    return int(hits[0]), int(hits[-1]) + 1
