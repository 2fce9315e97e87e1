"""elem_ab.py CKPT: the call box's element groups, scipy's graph search against label spreading.

``region_evidence`` of the top class's map on the real recordings' windows (their first 6, of
the first 14 recordings), with ``localise._elements`` as it was (``connected_components``) and
as it is (``_components``), in interleaved rounds; asserts the same ``Evidence`` and prints the
median CPU-ms per window of each.  Run from the repository root (2026-12-07, see
../../host-round3.md).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.csgraph import connected_components

sys.path[:0] = [".", "benchmarks"]
import _common as C  # noqa: E402

from echocam.explain import localise  # noqa: E402
from echocam.explain.cam import CellGrid, display_maps, explain  # noqa: E402
from echocam.explain.localise import Axes, band_floor, peaks_and_masks, region_evidence  # noqa
from echocam.explain.model import load_model  # noqa: E402
from echocam.settings import Params, params_for_model  # noqa: E402
from echocam.signal.frontend import FrontEnd, windowed  # noqa: E402

torch.set_num_threads(1)
model = load_model(sys.argv[1])
params = params_for_model(Params(), model.params, explicit=())
net = model.net.at_output_stride(params.output_stride).eval()
fe, grid = FrontEnd(params), CellGrid.of(params)
items = []
for path in C.recordings()[:14]:
    cut = windowed(Path(path).read_bytes(), params=params)
    for j in range(min(len(cut.starts), 6)):
        with torch.inference_mode():
            db = fe.db(torch.from_numpy(np.ascontiguousarray(cut.window(j)))[None])
            img8 = fe.colours(db)[2]
            cb = explain(net, fe.model_input(img8), top_k=params.top_k)
            maps = display_maps(cb.cams, size=db.shape[-2:], grid=grid)
            peak, mask = peaks_and_masks(maps, threshold=params.box_threshold)
        items.append((mask[0].numpy(), peak[0].numpy(), db[0].numpy(), band_floor(db)[0].numpy()))
axes = Axes.for_params(params, frames=items[0][2].shape[-1])
new = localise._elements


def old(spans, *, gap, octave, gap_octaves):
    group = np.arange(len(spans))
    while True:
        n = group.max() + 1
        box = np.tile([np.inf, -np.inf, np.inf, -np.inf], (n, 1))
        np.minimum.at(box, (group[:, None], [0, 2]), spans[:, [0, 2]])
        np.maximum.at(box, (group[:, None], [1, 3]), spans[:, [1, 3]])
        top, bottom, first, last = box.T
        near = (first[None, :] <= last[:, None] + gap) & (last[None, :] >= first[:, None] - gap)
        if octave is not None:
            high, low = octave[top.astype(int)], octave[bottom.astype(int)]
            apart = np.maximum(low[:, None] - high[None, :], low[None, :] - high[:, None])
            near &= apart <= gap_octaves
        k, merged = connected_components(near, directed=False)
        if k == n:
            return group
        group = merged[group]


def once():
    import time

    out = []
    t = time.process_time()
    for mask, peak, db, floor in items:
        for c in range(len(peak)):
            e = region_evidence(mask[c], int(peak[c]), axes=axes, offset_s=0.0, db=db, floor=floor)
            out.append(e)
    return time.process_time() - t, out


seconds, found = {"old": [], "new": []}, {}
for r in range(7):
    for name, f in (("old", old), ("new", new)) if r % 2 else (("new", new), ("old", old)):
        localise._elements = f
        dt, found[name] = once()
        seconds[name].append(dt)
assert found["old"] == found["new"]
ms = {name: np.median(s) / len(items) * 1e3 for name, s in seconds.items()}
print(
    f"{len(items)} windows x {params.top_k} classes: region_evidence CPU-ms per window "
    f"old {ms['old']:.3f}, new {ms['new']:.3f}, new / old {ms['new'] / ms['old']:.3f}"
)
