"""Embeddings: what the model sees in a window, and in one call of it, as one vector each.

A *window embedding* is the window's layer4 features averaged over the CAM grid: the vector the
classifier's last layer reads (512 values).  A *box embedding* pools the same features over the
cells under a box, weighted by the window's *activity map*: the call, not the window around it.
A detection's box is the activity map's evidence box (the region around its peak where the
map is at least ``box_threshold``, as ``echocam.explain.localise`` finds a class's), found on
the CAM's own grid (:func:`activity_cells`), a query's the box drawn.

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
from scipy import ndimage

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


def activity_cells(activity: np.ndarray, *, threshold: float) -> tuple[slice, slice]:
    """The cells of a window's call: an (h, w) activity map → the (rows, columns) of the cells
    the map's evidence box reaches, found on the CAM's own grid.

    The region is the 4-connected cells around the peak where the map, after ReLU and min-max
    as drawn (``echocam.explain.cam.display_maps``), is at least ``threshold`` (the peak alone
    when the map is constant).  Drawn, the map runs linearly from a cell's centre to its
    neighbour's, so the region reaches more than half way to an outside neighbour, and its box
    takes that cell in too (as :func:`box_embedding` counts cells), where the two cells' mean
    is at least ``threshold``.  A few µs; the same region on the drawn map costs a pass over
    every pixel.
    """
    m = np.maximum(activity, 0)
    m = m - m.min()
    top = m.max()
    peak = np.unravel_index(int(np.argmax(m)), m.shape)
    if not top > 0:
        return slice(peak[0], peak[0] + 1), slice(peak[1], peak[1] + 1)
    level = threshold * top
    labels, _ = ndimage.label(m >= level)
    own = labels == labels[peak]
    rows, cols = np.flatnonzero(own.any(axis=1)), np.flatnonzero(own.any(axis=0))
    (r0, r1), (c0, c1) = (rows[0], rows[-1]), (cols[0], cols[-1])

    def reaches(edge: np.ndarray, inside: np.ndarray, outside: np.ndarray) -> bool:
        return bool((edge & ((inside + outside) / 2 >= level)).any())

    h, w = m.shape
    r0 -= r0 > 0 and reaches(own[r0], m[r0], m[r0 - 1])
    r1 += r1 < h - 1 and reaches(own[r1], m[r1], m[r1 + 1])
    c0 -= c0 > 0 and reaches(own[:, c0], m[:, c0], m[:, c0 - 1])
    c1 += c1 < w - 1 and reaches(own[:, c1], m[:, c1], m[:, c1 + 1])
    return slice(int(r0), int(r1) + 1), slice(int(c0), int(c1) + 1)


def cells_box(
    rows: slice, cols: slice, *, shape: tuple[int, int], axes: Axes, grid: CellGrid
) -> tuple[float, float, float, float]:
    """The box of a block of cells of an (h, w) ``shape`` grid: (begin s, end s, low Hz, high
    Hz) from the window's start, as an evidence box (its first and last frames' times, its
    lowest and highest bands' centres) over the pixels less than half a cell from a cell's
    centre: :func:`box_embedding` of this box pools these cells again, and no others."""
    n_mels, frames = len(axes.freqs_hz), len(axes.times_s)
    ys, y_span = grid.centres(shape[0], pixels=n_mels)
    xs, x_span = grid.centres(shape[1], pixels=frames)

    def first(centre: float, span: float, n: int) -> int:
        return int(np.clip(np.floor(centre - span / 2) + 1, 0, n - 1))

    def last(centre: float, span: float, n: int) -> int:
        return int(np.clip(np.ceil(centre + span / 2) - 1, 0, n - 1))

    r0, r1 = first(ys[rows.start], y_span, n_mels), last(ys[rows.stop - 1], y_span, n_mels)
    c0, c1 = first(xs[cols.start], x_span, frames), last(xs[cols.stop - 1], x_span, frames)
    return (
        float(axes.times_s[c0]),
        float(axes.times_s[c1]),
        min(float(axes.freqs_hz[r1]), axes.top_hz),  # row 0 the highest band
        min(float(axes.freqs_hz[r0]), axes.top_hz),
    )


def cells_embedding(
    features: np.ndarray,
    weights_map: np.ndarray,
    rows: slice | np.ndarray,
    cols: slice | np.ndarray,
) -> np.ndarray:
    """(c, h, w) features pooled over a block of cells (``rows`` × ``cols``), each weighted by
    the (h, w) map's positive part (equally where that is zero on all) → (c,) float32."""
    weights = np.maximum(weights_map[rows][:, cols], 0).astype(np.float32)
    if not weights.sum() > 0:
        weights = np.ones_like(weights)
    cells = features[:, rows][:, :, cols].astype(np.float32)  # (c, len(rows), len(cols))
    return np.einsum("cyx,yx->c", cells, weights) / weights.sum()


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
    tolerance), weighted as :func:`cells_embedding`.
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
    return cells_embedding(features, weights_map, ys, xs)
