"""candidates.py WORKDIR UNSEEN OUT.json: which map should box a detection's embedding?

WORKDIR is a ``benchmarks/bench_families.py --workdir`` (its model/species.pt and heldout/);
UNSEEN names two families (comma-separated) the model never saw, whose clips are written as
``bench_search.py --quality`` writes them.  For each candidate map, every window's box is the call
box of that map (else its evidence box), its embedding the features under it weighted by the
map; precision@10 over trained and unseen species (each clip the query in turn, as
``devtools/more_like_this.py``), and the box's IoU with the clip's true call box.  Also the true
box weighted by the top class's CAM or by the activity map.  Run from the repository root;
the clips are cached under /tmp/cagn/.  Written for the 2026-12-07 comparison (see README.md).
"""

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [".", "benchmarks"]
from benchmarks import _common as C  # noqa
from devtools import families, more_like_this, synthetic  # noqa
from echocam.explain.cam import CellGrid, display_maps, explain  # noqa
from echocam.explain.embed import activity_cells, box_embedding, cells_box, cells_embedding  # noqa
from echocam.explain.localise import Axes, band_floor, peaks_and_masks, region_evidence  # noqa
from echocam.explain.model import load_model  # noqa
from echocam.settings import Params  # noqa
from echocam.signal.frontend import FrontEnd, windowed  # noqa

torch.set_num_threads(2)
wd, unseen, out = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
src = Path("/tmp/cagn") / wd.name
if not src.exists():
    import shutil

    shutil.copytree(wd / "heldout", src, ignore=shutil.ignore_patterns("*.csv"))
    _, held = synthetic.split_recordings(C.recordings())
    more_like_this.write_unseen(src, held, kinds=unseen, per_class=15, seed=0)
boxes = more_like_this.truth_boxes([wd / "heldout" / "calls.csv", src / "calls.csv"])
model = load_model(str(wd / "model" / "species.pt"))
names = model.class_names
bg = names.index("Background")
from echocam.settings import params_for_model  # noqa

params = params_for_model(Params(), model.params, explicit=())
print(params.input_size, params.output_stride)
net = model.net.at_output_stride(params.output_stride).eval()
fe = FrontEnd(params)
W = net.fc_weight.detach().float()
grid = CellGrid.of(params)
STRATS = [
    "act_cells",
    "act_ev",
    "act_topw",
    "actl2",
    "truth_top",
    "truth_act",
    "top",
    "top_nonbg",
    "mix",
    "contrast",
    "act",
    "notbg",
    "top_or_nonbg",
]

rows = []  # (key, species, window, {strat: vec}, {strat: box}, window_vec, top class)
for wav in sorted(src.glob("*/*.wav")):
    key = str(wav.relative_to(src))
    cut = windowed(wav.read_bytes(), params=params)
    for j in range(len(cut.starts)):
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(cut.window(j)))[None]
            db = fe.db(x)
            levels, _, img8 = fe.colours(db)
            cb = explain(net, fe.model_input(img8), top_k=1)
        F = cb.features[0].float()
        p = cb.probs[0]
        top = int(p.argmax())
        nb = [c for c in range(len(names)) if c != bg]
        pn = p[nb] / p[nb].sum()
        best_nb = nb[int(pn.argmax())]
        wmix = (pn[:, None] * W[nb]).sum(0)
        cams = {
            "top": W[top] @ F.flatten(1),
            "top_nonbg": W[best_nb] @ F.flatten(1),
            "mix": wmix @ F.flatten(1),
            "contrast": (wmix - W[bg]) @ F.flatten(1),
            "act": F.flatten(1).mean(0),
            "actl2": F.flatten(1).norm(dim=0),
            "notbg": -W[bg] @ F.flatten(1),
        }
        cams["top_or_nonbg"] = cams["top_nonbg"] if top == bg else cams["top"]
        h, w = F.shape[-2:]
        dbn = db[0].numpy()
        floor = band_floor(db)[0].numpy()
        axes = Axes.for_params(params, frames=dbn.shape[-1])
        start = float(cut.starts[j] / params.sample_rate)
        vecs, bxs = {}, {}
        if key in boxes:
            tb = boxes[key]
            rel = (tb[0] - start, tb[1] - start, tb[2], tb[3])
            for s, c in (("truth_top", cams["top"]), ("truth_act", cams["act"])):
                vecs[s] = box_embedding(
                    F.numpy(), c.reshape(h, w).numpy(), rel, axes=axes, grid=grid
                )
                bxs[s] = tb
        for s, c in cams.items():
            cam = c.reshape(h, w)
            m = display_maps(cam[None, None], size=dbn.shape, grid=grid)
            pk, mk = peaks_and_masks(m, threshold=params.box_threshold)
            e = region_evidence(
                mk[0, 0].numpy(), int(pk[0, 0]), axes=axes, offset_s=start, db=dbn, floor=floor
            )
            if not np.isnan(e.call_begin_s):
                b = (e.call_begin_s, e.call_end_s, e.call_low_hz, e.call_high_hz)
            else:
                b = (e.box_begin_s, e.box_end_s, e.box_low_hz, e.box_high_hz)
            bxs[s] = b
            rel = (b[0] - start, b[1] - start, b[2], b[3])
            vecs[s] = box_embedding(F.numpy(), cam.numpy(), rel, axes=axes, grid=grid)
            if s == "act":  # the activity map's evidence box: its region, no call box
                eb = (e.box_begin_s, e.box_end_s, e.box_low_hz, e.box_high_hz)
                vecs["act_ev"] = box_embedding(
                    F.numpy(),
                    cam.numpy(),
                    (eb[0] - start, eb[1] - start, eb[2], eb[3]),
                    axes=axes,
                    grid=grid,
                )
                bxs["act_ev"] = eb
                # the same on the CAM's grid (2026-12-07b): no map drawn at the display's size
                rs, cs = activity_cells(cam.numpy(), threshold=params.box_threshold)
                vecs["act_cells"] = cells_embedding(F.numpy(), cam.numpy(), rs, cs)
                cb_ = cells_box(rs, cs, shape=(h, w), axes=axes, grid=grid)
                bxs["act_cells"] = (cb_[0] + start, cb_[1] + start, cb_[2], cb_[3])
                vecs["act_topw"] = box_embedding(
                    F.numpy(), cams["top"].reshape(h, w).numpy(), rel, axes=axes, grid=grid
                )
                bxs["act_topw"] = b
            for t in ("truth_top", "truth_act"):
                if key not in boxes and s == "top":
                    vecs[t], bxs[t] = vecs[s], b
        rows.append((key, key.split("/")[0], j, vecs, bxs, F.mean((-2, -1)).numpy(), names[top]))


def prec(vs, keys, species, k=10):
    v = np.stack(vs).astype(np.float16).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    s = v @ v.T
    keys = np.array(keys)
    s[keys[:, None] == keys[None, :]] = -np.inf
    sp = np.array(species)
    found = {}
    for i in np.flatnonzero(sp != "Background"):
        best = np.argsort(-s[i], kind="stable")[:k]
        found.setdefault(sp[i], []).append(np.mean(sp[best] == sp[i]))
    return {n: float(np.mean(x)) for n, x in sorted(found.items())}


def iou(a, b):
    t = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    f = max(0, min(a[3], b[3]) - max(a[2], b[2]))
    inter = t * f
    ua = (a[1] - a[0]) * (a[3] - a[2]) + (b[1] - b[0]) * (b[3] - b[2]) - inter
    return inter / ua if ua > 0 else 0.0


keys = [r[0] for r in rows]
sps = [r[1] for r in rows]
res = {}


def summ(per):
    tr = [v for s, v in per.items() if s.rsplit("-", 1)[0] not in unseen]
    un = [v for s, v in per.items() if s.rsplit("-", 1)[0] in unseen]
    return round(float(np.mean(tr)), 3), round(float(np.mean(un)), 3)


res["window"] = {"p10": summ(prec([r[5] for r in rows], keys, sps))}
for s in STRATS:
    per = prec([r[3][s] for r in rows], keys, sps)
    ious = {}
    for r in rows:
        if r[0] in boxes:
            ious.setdefault(r[1].rsplit("-", 1)[0] in unseen, []).append(iou(r[4][s], boxes[r[0]]))
    res[s] = {
        "p10": summ(per),
        "iou_trained": round(float(np.mean(ious[False])), 3),
        "iou_unseen": round(float(np.mean(ious[True])), 3),
        "per": {k: round(v, 3) for k, v in per.items()},
    }
res["top_classes_unseen"] = dict(Counter(r[6] for r in rows if r[1].rsplit("-", 1)[0] in unseen))
for s, v in res.items():
    print(s, {k: v[k] for k in v if k != "per"} if isinstance(v, dict) and "p10" in v else v)
Path(out).write_text(json.dumps(res, indent=1))
