"""The loss that keeps a species model's CAM on its calls (``--outside-box-loss``).

Where the labels give boxes (a labels CSV's ``start_s,end_s[,low_hz,high_hz]``), every CAM cell
of a training window that lies away from every labelled box must be no species: no species'
logit may lie above the ``--background-class``'s (without one: the window's own class may lie
above no other).  A cell's logits are the fc layer applied to that cell's layer4 features; their
mean over the cells is the model's logits (global average pooling is linear), so a cell can be
asked for a class as the window is.  This is "right for the right reasons" (Ross et al. 2017)
on the CAM's own cells: the other birds and the noise around the labelled calls become dense
negatives, where a background window is one negative.  Cells whose centre lies within one cell
of a box are left out (their receptive field holds the call), as are windows without boxes
(folder labels) and windows with another class mixed in.  Every call in a labelled recording
must then be boxed: an unlabelled call is trained as no species."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from echocam.explain.cam import CellGrid, class_activation_maps
from echocam.explain.localise import Axes
from echocam.settings import Params
from echocam.signal.melscale import hz_to_mel
from echocam.train.labels import Box


def outside_cells(
    boxes: Sequence[Box], *, params: Params, cells: tuple[int, int], frames: int
) -> np.ndarray:
    """(h, w) bool: the CAM cells of a window of ``frames`` frames whose centre lies more than
    one cell away from every box of ``boxes``, in time or in mel; ``cells`` is the grid (h, w)."""
    h, w = cells
    grid = CellGrid.of(params)
    axes = Axes.for_params(params, frames=frames)
    cols, col_span = grid.centres(w, pixels=frames)
    rows, row_span = grid.centres(h, pixels=params.n_mels)
    times = np.interp(cols, np.arange(frames), axes.times_s)
    # band centres are evenly spaced in mel, row 0 the highest
    step = (hz_to_mel(params.fmax) - hz_to_mel(params.fmin)) / (params.n_mels + 1)
    mels = hz_to_mel(params.fmax) - (rows + 1) * step
    reach_s, reach_mel = col_span * axes.frame_s, row_span * step
    out = np.ones((h, w), bool)
    for start, end, low, high in boxes:
        near_t = (times >= start - reach_s) & (times <= end + reach_s)
        lo, hi = float(hz_to_mel(low)), float(hz_to_mel(high))
        near_m = (mels >= lo - reach_mel) & (mels <= hi + reach_mel)
        out &= ~(near_m[:, None] & near_t[None, :])
    return out


@dataclass
class OutsideBoxes:
    """A batch's labelled boxes, for :meth:`loss`: ``boxes[i]`` those of window i (None: not
    known, the window takes no part), ``labels[i]`` its class, ``frames[i]`` its frames."""

    boxes: list[Sequence[Box] | None]
    labels: list[int]
    frames: list[int]
    params: Params
    background: int | None  # the --background-class's index, if there is one

    def loss(self, features: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
        """The mean over the cells outside the boxes of features (b, 512, h, w) of how far the
        highest species logit lies above the background class's (0 where it does not), or
        without one, the own class's above the highest other; 0 where no cell is outside.

        A hinge, not a cross-entropy with the background class: that pushed the background's
        logit up in every cell, and through the average pooling the windows' too, so calls
        went to Background (measured: docs/guides/training.md)."""
        h, w = features.shape[-2:]
        masks = np.zeros((len(self.boxes), h, w), bool)
        for i, (boxes, n) in enumerate(zip(self.boxes, self.frames, strict=True)):
            if boxes is not None:
                masks[i] = outside_cells(boxes, params=self.params, cells=(h, w), frames=n)
        if not masks.any():
            return features.new_zeros(())
        mask = torch.from_numpy(masks).to(features.device)
        every = torch.arange(fc.out_features, device=features.device).expand(len(masks), -1)
        cams = class_activation_maps(features, fc.weight, every)  # (b, classes, h, w)
        cells = cams + fc.bias.float()[None, :, None, None]  # each cell's logits
        chosen = cells.permute(0, 2, 3, 1)[mask]  # (n, classes)
        if self.background is not None:
            floor = chosen[:, self.background]
            others = torch.cat([chosen[:, : self.background], chosen[:, self.background + 1 :]], 1)
            top = others.max(1).values
        else:
            own = torch.tensor(self.labels, device=chosen.device)[:, None, None].expand_as(mask)
            own = own[mask][:, None]
            top = chosen.gather(1, own)[:, 0]
            floor = chosen.scatter(1, own, float("-inf")).max(1).values
        return F.relu(top - floor).mean()
