"""Augmentation that fits audio: where the window is cut, what it is mixed with, masks on the dB.

Waveform steps run on the decoding threads (numpy, one example at a time, each with its own
seeded generator); masking runs on the device on a batch of dB spectrograms, before the colour
map.  With :meth:`Augment.off` every step is the identity, and a training window's model input
is exactly the inference input of the same samples.
"""

from __future__ import annotations

import numpy as np
import torch

from echocam.train.config import Augment


def crop_start(
    n: int,
    *,
    length: int,
    rng: np.random.Generator | None,
    span: tuple[int, int] | None = None,
) -> int:
    """Start (samples) of a ``length``-sample window in a recording of ``n`` samples.

    Without ``span`` the window lies anywhere in the recording (``rng`` None: centred).  With
    ``span`` (start, end samples of an annotation) the window holds the whole span when it fits,
    else lies inside it; ``rng`` None: centred on the span.  ``length >= n`` gives 0.
    """
    if length >= n:
        return 0
    lo, hi = 0, n - length
    if span is not None:
        a, b = span
        if b - a <= length:
            lo, hi = max(lo, b - length), min(hi, a)
        else:
            lo, hi = max(lo, a), min(hi, b - length)
        lo, hi = min(lo, hi), max(lo, hi)
        lo, hi = min(max(lo, 0), n - length), min(max(hi, 0), n - length)
    if rng is None:
        return (lo + hi) // 2
    return int(rng.integers(lo, hi + 1))


def rms(x: np.ndarray) -> float:
    """Root mean square of ``x``, accumulated in float64."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def mix_background(
    x: np.ndarray, background: np.ndarray, *, snr_db: float, rng: np.random.Generator
) -> np.ndarray:
    """``x`` (n,) plus a random stretch of ``background`` (looped if shorter) at ``snr_db``.

    The SNR is RMS(x) over RMS(background stretch), in dB; a silent stretch adds nothing.
    """
    n = x.shape[0]
    bg = (
        background
        if background.shape[0] >= n
        else np.tile(background, -(-n // background.shape[0]))
    )
    off = int(rng.integers(0, bg.shape[0] - n + 1))
    bg = bg[off : off + n].astype(np.float32)
    rms_x, rms_bg = rms(x), rms(bg)
    if rms_bg == 0.0 or rms_x == 0.0:
        return x
    return x + bg * np.float32(rms_x / rms_bg * 10 ** (-snr_db / 20))


def apply_gain(x: np.ndarray, gain_db: float) -> np.ndarray:
    """``x`` scaled by ``gain_db`` dB.

    The front end's dB is relative to each window's maximum, so a gain changes the image only
    where the power reaches the ``amin`` floor (-100 dB: digital silence, padding); it is kept
    for inputs whose level matters (a recorder's gain before the mix).
    """
    return x * np.float32(10 ** (gain_db / 20))


def mask_db(
    db: torch.Tensor, *, augment: Augment, frames_per_s: float, generator: torch.Generator
) -> torch.Tensor:
    """Time and frequency masks on dB (b, n_mels, t): masked cells take the window's floor.

    The floor is each window's minimum, which the colour map draws black.  Positions come from
    ``generator`` (a CPU generator: the same seed gives the same masks on any device).
    """
    b, m, t = db.shape
    if augment.mask_p <= 0 or (augment.time_masks == 0 and augment.freq_masks == 0):
        return db
    floor = db.amin(dim=(-2, -1), keepdim=True)
    keep = torch.ones(b, m, t, dtype=torch.bool)
    max_t = max(1, int(augment.time_mask_s * frames_per_s))
    max_f = max(1, int(augment.freq_mask_frac * m))

    def draw(high: int) -> int:
        return int(torch.randint(0, max(1, high), (1,), generator=generator))

    for i in range(b):
        if float(torch.rand(1, generator=generator)) >= augment.mask_p:
            continue
        for _ in range(augment.time_masks):
            w = draw(max_t + 1)
            s = draw(t - w + 1)
            keep[i, :, s : s + w] = False
        for _ in range(augment.freq_masks):
            h = draw(max_f + 1)
            s = draw(m - h + 1)
            keep[i, s : s + h, :] = False
    keep = keep.to(db.device, non_blocking=True)
    return torch.where(keep, db, floor)
