"""Spectrogram dB → 8-bit magma RGB image → model input (224 × 224, or the spectrogram's own
size), ImageNet-normalised."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from echocam.signal import colormaps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_SIZE = 224


def minmax(x: torch.Tensor, *, dims: tuple[int, ...] = (-2, -1), eps: float = 0.0) -> torch.Tensor:
    """Per-map min-max normalisation to [0, 1] over ``dims``; a constant map becomes zeros."""
    lo = x.amin(dim=dims, keepdim=True)
    x = x - lo
    hi = x.amax(dim=dims, keepdim=True)
    if eps:
        return x / (hi + eps)
    return torch.where(hi > 0, x / hi.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def spectrogram_levels(db: torch.Tensor) -> torch.Tensor:
    """dB (b, n_mels, t) → colour-map rows (b, n_mels, t) int32 in [0, 255], as
    ``librosa.display.specshow`` draws it.

    Each window is scaled from its own min to max (specshow's default colour limits) and low
    frequencies are at the bottom (row 0 is the highest mel band).  The numbers of
    ``colormaps.levels(minmax(db).flip(-2))``, in fewer passes: ``(x / hi) * 256`` is
    ``x / (hi / 256)`` exactly (a power of two), and ``max(db - lo)`` is ``max(db) - lo``.
    """
    lo, hi = torch.aminmax(db.flatten(-2), dim=-1)
    lo = lo[..., None, None]
    step = (hi - lo[..., 0, 0]).div_(256)
    step = torch.where(step > 0, step, torch.inf)[..., None, None]  # constant: all row 0
    out = torch.empty(db.shape, dtype=torch.int32, device=db.device)
    # On the CPU a window at a time, its temporaries in cache; a GPU takes the batch at once.
    n = 1 if db.device.type == "cpu" else max(1, db.shape[0])
    for i in range(0, db.shape[0], n):
        scaled = torch.sub(db[i : i + n].flip(-2), lo[i : i + n]).div_(step[i : i + n])
        out[i : i + n] = scaled  # truncation toward zero: floor, as scaled >= 0
    return out.clamp_(0, 255)


def spectrogram_rgb(db: torch.Tensor, *, lut: torch.Tensor) -> torch.Tensor:
    """dB (b, n_mels, t) → uint8 RGB (b, n_mels, t, 3): :func:`spectrogram_levels` through
    ``lut``.  Channels last, as the lookup gives them and PNG rows want them: no transposes."""
    return colormaps.lookup(spectrogram_levels(db), lut)


def model_image(
    rgb: torch.Tensor, *, size: int = MODEL_SIZE, uint8_kernel: bool | None = None
) -> torch.Tensor:
    """uint8 RGB (b, h, w, 3) → uint8 (b, 3, size, size), bilinear with antialiasing; ``size``
    0: (b, 3, h, w), the image itself (a channels-last view).

    The result is what the network sees; it is saved with ``--save-inputs``, so the CAM can be
    recomputed from the PNG with torchvision alone.  torch's uint8 kernel (CPU only) is Pillow's
    resize algorithm, so the model sees what a PIL resize would give it; CUDA has only the float
    path, within a level of it.  ``uint8_kernel`` (default: on the CPU) picks between them.
    """
    x = rgb.permute(0, 3, 1, 2)  # a channels_last view; interpolate keeps that layout
    if size == 0:
        return x
    resize = {"size": (size, size), "mode": "bilinear", "align_corners": False, "antialias": True}
    if uint8_kernel is None:
        uint8_kernel = x.device.type == "cpu"
    if uint8_kernel:
        return F.interpolate(x, **resize)
    return F.interpolate(x.float(), **resize).round_().clamp_(0, 255).to(torch.uint8)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (b, 3, h, w) → float32 ImageNet-normalised (torchvision's ToTensor + Normalize)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
