"""Embeddings: what the model sees in a window, and in one call of it, as one vector each.

A *window embedding* is the window's layer4 features averaged over the CAM grid: the vector the
classifier's last layer reads (512 values).  A *box embedding* pools the same features over the
cells under a box, weighted by the window's *activity map*: the call, not the window around it.
A detection's box is the activity map's evidence box (``echocam.explain.localise``: the region
around its peak where the drawn map is at least ``box_threshold``), a query's the box drawn.

The activity map is the features' mean over channels: where the network responds, whatever the
class.  A class's CAM is not: on a call type the model never saw, the most probable class is
often the one with no call, whose CAM covers everything but the call.  Measured in
``docs/guides/search.md``: with its evidence box, "more like this" finds the same call type
more often than with the class's call box or with the activity map's own call box, and costs
one connected region per window, not a call box.

Window and box embeddings are compared by cosine similarity (``echocam.search``), and stored as
``echocam.bucket.embeddings`` says.  Pure functions; the pipeline calls them a batch or a
window at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from echocam.explain.cam import CellGrid
from echocam.explain.localise import Axes

#: A detection's box embedding's ``box`` in embeddings.parquet: the activity map's evidence box
#: (runs before 2026-12-07 have "call" or "evidence": their class's boxes).
BOX = "activity"


def window_embeddings(features: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) layer4 features → (b, c) float32, their mean over the grid."""
    return features.float().mean(dim=(-2, -1))


def activity_maps(features: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) layer4 features → (b, 1, h, w) float32, their mean over channels: a
    class-agnostic map in the CAMs' shape (``echocam.explain.cam.display_maps`` draws both)."""
    return features.float().mean(dim=1, keepdim=True)


def box_embedding(
    features: np.ndarray,
    weights_map: np.ndarray,
    box: tuple[float, float, float, float],
    *,
    axes: Axes,
    grid: CellGrid,
) -> np.ndarray:
    """One box's embedding: (c, h, w) features and an (h, w) map (the window's activity map)
    → (c,) float32.

    ``box`` is (begin s, end s, low Hz, high Hz) from the window's start.  The cells it
    overlaps count (those whose centre lies within half a cell of it, as the pointing game's
    tolerance), each weighted by the map's positive part (equally where that is zero on all).
    """
    h, w = weights_map.shape
    n_mels, frames = len(axes.freqs_hz), len(axes.times_s)
    rows, row_span = grid.centres(h, pixels=n_mels)
    cols, col_span = grid.centres(w, pixels=frames)
    begin, end, low, high = box
    # the box in display pixels: frames in time, mel rows (row 0 the highest) in frequency
    t0, t1 = begin / axes.frame_s, end / axes.frame_s
    band = np.flatnonzero((axes.high_hz > low) & (axes.low_hz < high))
    r0, r1 = (band[0], band[-1]) if len(band) else (0, n_mels - 1)
    ys = np.flatnonzero((rows >= r0 - row_span / 2) & (rows <= r1 + row_span / 2))
    xs = np.flatnonzero((cols >= t0 - col_span / 2) & (cols <= t1 + col_span / 2))
    if not len(ys):  # a box beyond the map's last centres: the nearest cell
        ys = np.array([np.abs(rows - (r0 + r1) / 2).argmin()])
    if not len(xs):
        xs = np.array([np.abs(cols - (t0 + t1) / 2).argmin()])
    weights = np.maximum(weights_map[np.ix_(ys, xs)], 0).astype(np.float32)
    if not weights.sum() > 0:
        weights = np.ones_like(weights)
    cells = features[:, ys][:, :, xs].astype(np.float32)  # (c, len(ys), len(xs))
    return np.einsum("cyx,yx->c", cells, weights) / weights.sum()
