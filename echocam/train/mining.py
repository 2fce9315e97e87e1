"""Hard negatives chosen by the model being trained (``--hard-negatives-by model``).

A ``--background-class`` window is one of ``--hard-negatives`` random windows of a
``--background`` recording.  By loudness, the loudest: other birds, more often than a random
stretch.  By the model, the one that the network, as it stands at the epoch's start, finds most
like any other class: the sounds it is taking for a species, whatever their level (online hard
example mining).  Measured on held-out call families (docs/guides/training.md): it cured one
model of taking a dawn chorus's loud bird for a broadband-chips species, and made others call
some of their species' calls Background (the background's own calls most like them, now
labelled as none), so it is an option.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from echocam.errors import EchoCamError
from echocam.signal.frontend import FrontEnd
from echocam.train.augment import crop_start
from echocam.train.dataset import Loader, model_inputs

_STREAM = 0x4E6  # the candidates' random stream, apart from the windows' own


def mine(
    net: nn.Module,
    fe: FrontEnd,
    loader: Loader,
    order: Sequence[int],
    *,
    epoch: int,
    batch_size: int,
) -> dict[int, int]:
    """Position in ``order`` → the start (samples) of that background example's window: of
    ``loader.augment.hard_negatives`` random starts, the one whose window ``net`` (in eval
    mode) gives the highest probability of a class other than the example's own.

    Recordings that fail to load are left out (their windows are then cut as usual).  Each
    recording is loaded once, and only its candidate windows kept (with ``--decode-cache off``
    a recording is decoded in full).
    """
    k = loader.augment.hard_negatives
    if k < 2:
        return {}
    positions: dict[int, list[int]] = {}  # background example → its positions in ``order``
    for position, index in enumerate(order):
        if loader.examples[int(index)].background:
            positions.setdefault(int(index), []).append(position)
    length = loader.params.window_samples
    candidates: list[tuple[int, int, int]] = []  # (position, start, label)
    windows: list[np.ndarray] = []
    for index, at in positions.items():
        ex = loader.examples[index]
        try:
            samples = loader.samples(ex)
        except (EchoCamError, FileNotFoundError):
            continue
        n = min(length, samples.shape[0])
        for position in at:
            rng = np.random.default_rng([loader.seed, epoch, position, _STREAM])
            for _ in range(k):
                start = crop_start(samples.shape[0], length=n, rng=rng)
                candidates.append((position, start, ex.label))
                windows.append(samples[start : start + n].copy())
    if not candidates:
        return {}
    labels = torch.tensor([c[2] for c in candidates])
    scores = torch.cat(
        [
            other_class_probability(
                net, fe, windows[i : i + batch_size], labels[i : i + batch_size]
            )
            for i in range(0, len(windows), batch_size)
        ]
    )
    best: dict[int, tuple[float, int]] = {}
    for (position, start, _), score in zip(candidates, scores.tolist(), strict=True):
        if position not in best or score > best[position][0]:
            best[position] = (score, start)
    return {position: start for position, (_, start) in best.items()}


def other_class_probability(
    net: nn.Module, fe: FrontEnd, waves: Sequence[np.ndarray], labels: torch.Tensor
) -> torch.Tensor:
    """(b,) the highest softmax probability of a class other than ``labels`` (b,), of windows
    ``waves`` through ``fe`` and ``net`` in eval mode (left in the mode it was in)."""
    was_training = net.training
    net.eval()
    try:
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=fe.device.type == "cuda"),
        ):
            probs = net(model_inputs(fe, waves)).float().softmax(dim=1).cpu()
            probs[torch.arange(len(labels)), labels] = -1.0
            return probs.amax(dim=1)
    finally:
        net.train(was_training)
