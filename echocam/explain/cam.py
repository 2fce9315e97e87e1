"""Class Activation Maps (Zhou et al. 2016) for a GAP+FC network, batched on the model's device."""

from __future__ import annotations

import functools
from dataclasses import dataclass

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


def display_maps(
    cams: torch.Tensor, *, size: tuple[int, int], unresized: bool = False, stride: int = STRIDE
) -> torch.Tensor:
    """Maps for display in [0, 1]: (b, k, h, w) raw CAMs → (b, k, *size).

    ReLU (only positive evidence, as Grad-CAM) and per-map min-max (as CAM's authors show it),
    then bilinear resampling that puts each cell's value where its receptive field is centred
    (see :data:`STRIDE`; ``stride``: the model's output stride), clamped at the borders.
    ``size`` spans the same extent as the model's image: a square of ``stride`` pixels a cell,
    resized from the spectrogram, or with
    ``unresized`` the spectrogram itself (``Params.input_size`` 0: ``size`` is the image's).
    pytorch-grad-cam and ``F.interpolate(align_corners=False)`` put cell j at the middle of its
    32-px block instead, half a cell right of and below its evidence.
    """
    h, w = cams.shape[-2:]
    maps = minmax(cams.float().relu(), eps=1e-7)
    image = size if unresized else (h * stride, w * stride)
    rows = _resampling(size[0], h, image[0], stride, device=maps.device)
    cols = _resampling(size[1], w, image[1], stride, device=maps.device)
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
