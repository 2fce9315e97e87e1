"""ResNet-18 with its ``layer4`` features exposed, and the weights it can be loaded with."""

from __future__ import annotations

import copy
import hashlib
import io
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet, ResNet18_Weights, resnet18

from echocam.errors import WeightsUnavailable
from echocam.settings import LATER_PARAMS, OUTPUT_STRIDES, Settings


def set_output_stride(net: ResNet, stride: int) -> None:
    """Put ``net``'s layer4 cells every ``stride`` model-input pixels, in place.

    32 is ResNet-18's own.  16 removes layer4's stride and dilates every 3×3 convolution after
    it by 2 (the atrous trick of DeepLab): each weight still meets the features it met at 32,
    so any ResNet-18 state dict (ImageNet's included) loads at either stride, and the grid has
    twice the cells along each axis for about 1.7× the compute of the forward pass.
    """
    if stride not in OUTPUT_STRIDES:
        raise ValueError(f"output stride must be one of {OUTPUT_STRIDES}, not {stride}")
    first, second = net.layer4
    step, dilation = (2, 1) if stride == 32 else (1, 2)
    first.conv1.stride = first.downsample[0].stride = (step, step)
    for conv in (first.conv2, second.conv1, second.conv2):
        conv.dilation = conv.padding = (dilation, dilation)


class HookedResNet18(nn.Module):
    """torchvision ``resnet18`` in eval mode; ``forward`` returns (logits, layer4 features).

    The features come from a forward hook on ``layer4``,
    registered for the duration of one call so no tensor outlives the batch on the module.
    """

    def __init__(self, num_classes: int = 1000, *, output_stride: int = 32):
        super().__init__()
        self.net = resnet18(weights=None, num_classes=num_classes)
        set_output_stride(self.net, output_stride)
        self.eval()

    @property
    def output_stride(self) -> int:
        return 32 if self.net.layer4[0].conv1.stride[0] == 2 else 16

    def at_output_stride(self, stride: int) -> HookedResNet18:
        """This model at ``stride``: itself, or a copy with the same weights (not changed in
        place, so explainers at two strides can share a loaded model)."""
        if stride == self.output_stride:
            return self
        other = copy.deepcopy(self)
        set_output_stride(other.net, stride)
        return other

    @classmethod
    def around(cls, net: nn.Module) -> HookedResNet18:
        """A hooked view of a torchvision ResNet-18 being trained: its parameters, not a copy,
        and its mode (train or eval) as it is."""
        hooked = cls.__new__(cls)
        nn.Module.__init__(hooked)
        hooked.net = net
        return hooked

    @property
    def fc_weight(self) -> torch.Tensor:
        """(classes, 512) weights of the final linear layer: the CAM's class weights."""
        return self.net.fc.weight

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = self.net.layer4.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            logits = self.net(x)
        finally:
            handle.remove()
        return logits, captured[0]


@dataclass
class LoadedModel:
    """A model ready to explain with: its identity travels into every output."""

    net: HookedResNet18
    class_names: list[str]
    sha256: str
    weights: str  # "imagenet", "random", a path or an s3:// URI
    weights_kind: str  # "imagenet" | "random" | "checkpoint"
    # The analysis parameters (``Params.to_dict()``) a trained checkpoint carries: inference
    # must use its model-input fields (``echocam.settings.params_for_model``), and ``net`` is
    # built at its output stride.  None: any.
    params: dict | None = None

    @property
    def identity(self) -> dict[str, object]:
        return {
            "arch": "resnet18",
            "sha256": self.sha256,
            "weights": self.weights,
            "weights_kind": self.weights_kind,
            "random_weights": self.weights_kind == "random",
        }


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Checkpoint:
    """What a checkpoint file holds: ``torch.save`` of :meth:`to_dict`, a dict of plain values
    that ``torch.load(weights_only=True)`` reads back.

    A species model needs ``state_dict`` and ``class_names``; ``echocam train`` adds the rest.
    """

    state_dict: dict[str, torch.Tensor]
    class_names: list[str]
    #: ``Params.to_dict()`` of the training run: inference must use its model-input fields
    #: (``echocam.settings.params_for_model``).
    params: dict[str, Any] | None = None
    #: the training run's summary: best epoch, validation scores, history, skipped files
    metrics: dict[str, Any] | None = None
    #: ``TrainConfig.to_dict()`` and what the run used (device, threads, versions)
    train_config: dict[str, Any] | None = None
    #: the data it learnt from: source, examples and recordings per class, keys' sha256
    data: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as saved."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.to_dict(), buf)
        return buf.getvalue()

    @classmethod
    def from_blob(cls, blob: Any, *, source: str) -> Checkpoint:
        """A loaded checkpoint file: this dict, or a bare ResNet-18 state dict (class names
        ``class_<i>``)."""
        if isinstance(blob, dict) and "state_dict" in blob:
            known = {f.name for f in fields(cls)}
            kw = {k: v for k, v in blob.items() if k in known}
        else:
            kw = {"state_dict": blob, "class_names": None}
        state = kw["state_dict"]
        if not isinstance(state, dict) or "fc.weight" not in state:
            raise WeightsUnavailable(f"{source}: expected a ResNet-18 state dict with fc.weight")
        if kw.get("class_names") is None:
            kw["class_names"] = [f"class_{i}" for i in range(state["fc.weight"].shape[0])]
        kw["class_names"] = list(kw["class_names"])
        return cls(**kw)


def save_checkpoint(path: str | os.PathLike, state_dict: dict, class_names: list[str]) -> None:
    """Write a species model's checkpoint: a state dict and its class names."""
    Path(path).write_bytes(Checkpoint(state_dict, list(class_names)).to_bytes())


def load_model(weights: str, *, seed: int = 0, read_bytes=None) -> LoadedModel:
    """Build the hooked ResNet-18 on the CPU from ``weights``.

    ``weights`` is ``imagenet`` (torchvision IMAGENET1K_V1, from the torch hub cache or the
    network), ``random`` (seeded by ``seed``; marked as such in every output), a checkpoint
    path, or an ``s3://bucket/key`` URI read with ``read_bytes(uri) -> bytes`` (a
    :class:`Checkpoint`, whose ``params`` become ``LoadedModel.params``); the fc layer is sized
    from the state dict.
    """
    trained = None
    if weights == "imagenet":
        state, names, kind = _imagenet_state_dict(), _imagenet_classes(), "imagenet"
    elif weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = resnet18(weights=None).state_dict()
        names, kind = [f"class_{i}" for i in range(1000)], "random"
    else:
        ckpt = _checkpoint(weights, read_bytes)
        state, names, trained, kind = ckpt.state_dict, ckpt.class_names, ckpt.params, "checkpoint"
    num_classes = state["fc.weight"].shape[0]
    if len(names) != num_classes:
        raise WeightsUnavailable(
            f"{weights}: {len(names)} class names for an fc layer of {num_classes} classes"
        )
    # a checkpoint from before the field existed ran at ResNet-18's own stride
    stride = (trained or {}).get("output_stride", LATER_PARAMS["output_stride"])
    net = HookedResNet18(num_classes, output_stride=stride)
    try:
        net.net.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsUnavailable(f"{weights}: not a ResNet-18 state dict: {e}") from None
    net.requires_grad_(False)
    return LoadedModel(net, list(names), state_dict_sha256(state), weights, kind, trained)


def load_model_from(settings: Settings) -> LoadedModel:
    """The model ``settings.weights`` names (seeded by ``settings.weights_seed``); checkpoints may
    live in S3, read with the settings' S3 client."""

    def read_bytes(uri: str) -> bytes:
        from echocam.bucket.storage import S3Store, client_factory

        store = S3Store(uri.rsplit("/", 1)[0], client_factory(settings)())
        return store.get(uri.rsplit("/", 1)[1])[0]

    return load_model(settings.weights, seed=settings.weights_seed, read_bytes=read_bytes)


def _imagenet_classes() -> list[str]:
    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_cache_path() -> Path:
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    path = imagenet_cache_path()
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    url = ResNet18_Weights.IMAGENET1K_V1.url
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True
        )
    except Exception as e:  # URLError, timeouts, proxies: all mean "not available here"
        raise WeightsUnavailable(
            f"ImageNet ResNet-18 weights are not cached and cannot be downloaded ({e}). "
            f"Download {url} on a machine that is online and put it at {path} "
            f"(or set TORCH_HOME to a directory holding hub/checkpoints/{path.name}), "
            f"or pass a checkpoint with --weights PATH / ECHOCAM_WEIGHTS."
        ) from None


def _checkpoint(weights: str, read_bytes) -> Checkpoint:
    try:
        if weights.startswith("s3://"):
            if read_bytes is None:
                raise WeightsUnavailable(f"{weights}: no S3 reader given")
            blob = torch.load(
                io.BytesIO(read_bytes(weights)), map_location="cpu", weights_only=True
            )
        else:
            blob = torch.load(weights, map_location="cpu", weights_only=True)
    except WeightsUnavailable:
        raise
    except Exception as e:
        raise WeightsUnavailable(f"cannot load weights {weights!r}: {e}") from None
    return Checkpoint.from_blob(blob, source=weights)
