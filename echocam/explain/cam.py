"""Class Activation Maps (Zhou et al. 2016) for a GAP+FC network, batched on the model's device."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from echocam.explain.model import HookedResNet18
from echocam.signal.image import minmax


@dataclass
class CamBatch:
    """One forward pass over a batch of b images and its CAMs; tensors stay on the device."""

    logits: torch.Tensor  # (b, classes) float32
    probs: torch.Tensor  # (b, classes) softmax
    class_ids: torch.Tensor  # (b, k) int64: the explained classes, best first for top-k
    cams: torch.Tensor  # (b, k, h, w) float32 raw CAMs, sum_c W[class, c] * A[c] (no bias)
    features: torch.Tensor  # (b, c, h, w) the layer4 features A the CAMs weigh


def class_activation_maps(
    features: torch.Tensor, fc_weight: torch.Tensor, class_ids: torch.Tensor
) -> torch.Tensor:
    """Raw CAMs: features (b, c, h, w), fc_weight (classes, c), class_ids (b, k) → (b, k, h, w).

    Always float32: under bf16 autocast (the CUDA forward) einsum would otherwise round to bf16.
    """
    with torch.autocast(features.device.type, enabled=False):
        return torch.einsum("bkc,bchw->bkhw", fc_weight[class_ids].float(), features.float())


def explain(
    net: HookedResNet18,
    images: torch.Tensor,
    *,
    top_k: int = 1,
    class_ids: torch.Tensor | None = None,
) -> CamBatch:
    """Forward normalised ``images`` (b, 3, h, w) once; CAMs for the top-k or given classes.

    ``class_ids`` (k,) names the classes to explain in every image; without it the ``top_k``
    most probable classes of each image are explained.
    """
    logits, features = net(images)
    logits = logits.float()
    probs = logits.softmax(dim=-1)
    if class_ids is None:
        ids = probs.topk(top_k, dim=-1).indices
    else:
        ids = class_ids.to(images.device).expand(images.shape[0], -1)
    cams = class_activation_maps(features, net.fc_weight, ids)
    return CamBatch(logits, probs, ids, cams, features)


#: torchvision's ResNet-18 halves the grid five times (conv1, maxpool, layer2-4 each stride 2,
#: padding k // 2), so layer4 cell j is centred on model-image pixel 32 j; at output stride 16
#: (``echocam.explain.model.set_output_stride``) layer4 keeps layer3's grid, cell j on 16 j.
STRIDE = 32


@dataclass(frozen=True)
class CellGrid:
    """Where CAM cells sit on the spectrogram: ``stride`` model-image pixels a cell (the
    model's output stride), over a model image resized from the spectrogram to whole cells, or
    ``unresized``: the spectrogram itself (``Params.input_size`` 0)."""

    stride: int = STRIDE
    unresized: bool = False

    @classmethod
    def of(cls, params) -> CellGrid:
        """The grid of a run's ``echocam.settings.Params``."""
        return cls(stride=params.output_stride, unresized=params.input_size == 0)

    def image(self, cells: int, *, pixels: int) -> int:
        """The model image's extent, in its pixels, along an axis of ``cells`` cells that is
        ``pixels`` display pixels long."""
        return pixels if self.unresized else cells * self.stride

    def centres(self, cells: int, *, pixels: int) -> tuple[np.ndarray, float]:
        """Where each cell's receptive field is centred along an axis of ``pixels`` display
        pixels, as :func:`display_maps` puts it: ((cells,) centres, one cell's span in pixels)."""
        scale = pixels / self.image(cells, pixels=pixels)
        return (self.stride * np.arange(cells) + 0.5) * scale - 0.5, self.stride * scale


def display_maps(
    cams: torch.Tensor, *, size: tuple[int, int], grid: CellGrid = CellGrid()
) -> torch.Tensor:
    """Maps for display in [0, 1]: (b, k, h, w) raw CAMs → (b, k, *size).

    ReLU (only positive evidence, as Grad-CAM) and per-map min-max (as CAM's authors show it),
    then bilinear resampling that puts each cell's value where its receptive field is centred
    (see :data:`STRIDE` and :class:`CellGrid`), clamped at the borders. ``size`` spans the same
    extent as the model's image.
    pytorch-grad-cam and ``F.interpolate(align_corners=False)`` put cell j at the middle of its
    32-px block instead, half a cell right of and below its evidence.
    """
    h, w = cams.shape[-2:]
    maps = minmax(cams.float().relu(), eps=1e-7)
    rows = _resampling(size[0], h, grid.image(h, pixels=size[0]), grid.stride, device=maps.device)
    cols = _resampling(size[1], w, grid.image(w, pixels=size[1]), grid.stride, device=maps.device)
    return minmax(torch.einsum("Hh,bkhw,Ww->bkHW", rows, maps, cols), eps=1e-7)


@functools.lru_cache(maxsize=16)  # a run has a few window lengths and one device
def _resampling(
    n_out: int, n_in: int, image: int, stride: int, *, device: torch.device
) -> torch.Tensor:
    """(n_out, n_in) linear-interpolation weights from cell values to output pixels (shared:
    read only), over an ``image`` pixels wide.

    Output pixel y's centre lies at model-image coordinate (y + 0.5) · image / n_out; cell j's
    receptive field is centred on pixel stride · j, whose centre is stride · j + 0.5.
    """
    u = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * image / n_out - 0.5) / stride
    u = u.clamp(0, n_in - 1)
    lo = u.floor().long().clamp(max=max(n_in - 2, 0))
    frac = (u - lo).float()
    weights = torch.zeros(n_out, n_in)
    weights[torch.arange(n_out), lo] = 1 - frac
    if n_in > 1:
        weights[torch.arange(n_out), lo + 1] += frac
    return weights.to(device)
