"""Class Activation Maps (Zhou et al. 2016) for a GAP+FC network, batched on the model's device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from echocam.image import minmax
from echocam.model import HookedResNet18


@dataclass
class CamBatch:
    """One forward pass over a batch of b images and its CAMs; tensors stay on the device."""

    logits: torch.Tensor  # (b, classes) float32
    probs: torch.Tensor  # (b, classes) softmax
    class_ids: torch.Tensor  # (b, k) int64: the explained classes, best first for top-k
    cams: torch.Tensor  # (b, k, h, w) float32 raw CAMs, sum_c W[class, c] * A[c] (no bias)


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
    """Forward normalised ``images`` (b, 3, 224, 224) once; CAMs for the top-k or given classes.

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
    return CamBatch(logits, probs, ids, class_activation_maps(features, net.fc_weight, ids))


def display_maps(cams: torch.Tensor, *, size: tuple[int, int]) -> torch.Tensor:
    """Maps for display in [0, 1]: (b, k, h, w) raw CAMs → (b, k, *size).

    ReLU (only positive evidence, as Grad-CAM), per-map min-max (as CAM's authors show it),
    bilinear upsampling, min-max again: pytorch-grad-cam's ``scale_cam_image`` on the same maps.
    """
    maps = minmax(cams.float().relu(), eps=1e-7)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return minmax(maps, eps=1e-7)
