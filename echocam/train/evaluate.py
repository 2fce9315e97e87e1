"""``echocam evaluate``: a checkpoint against a labelled source, on inference windows.

Writes under ``out``: ``metrics.json`` (accuracy, macro-F1, per-class precision / recall / F1,
the confusion matrix, skipped objects by error code and, where the labels give boxes, the
pointing game), ``confusion.json``, ``confusion.png`` and ``predictions.csv`` (one row per
recording, or per annotated span, with the fraction of its windows that pointed into its box).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from echocam.bucket.storage import client_factory, open_store
from echocam.explain.device import resolve_device, set_threads
from echocam.explain.model import load_model_from
from echocam.settings import Params, Settings, params_for_model
from echocam.signal.frontend import FrontEnd
from echocam.train import scores
from echocam.train.labels import list_folders, read_labels
from echocam.train.loop import _read_text
from echocam.train.pointing import wrong_reasons
from echocam.train.predict import predict


def evaluate(
    source: str,
    *,
    out: str,
    params: Params,
    settings: Settings,
    labels: str | None = None,
    explicit: Collection[str] | None = None,
) -> dict[str, Any]:
    """Predict every example under ``source`` with ``settings.weights``; write and return metrics.

    The model's trained analysis parameters are used (``params`` fields in ``explicit`` must
    agree with them).  Folder (or label) names must be classes of the model.
    """
    set_threads(settings.threads)
    model = load_model_from(settings)
    params = params_for_model(params, model.params, explicit=explicit)
    make = client_factory(settings)
    src = open_store(source, client_factory=make)
    names = model.class_names
    if labels:
        labelled = read_labels(_read_text(labels, make), source=src.uri, class_names=names)
    else:
        labelled = list_folders(
            src, extensions=settings.extensions, page_size=settings.page_size, class_names=names
        )
    device = resolve_device(settings.device)
    net = model.net.at_output_stride(params.output_stride).to(device).eval()
    batch_size = settings.batch_size or (256 if device.type == "cuda" else 32)
    with ThreadPoolExecutor(settings.io_threads) as pool:
        pred = predict(
            net,
            FrontEnd(params, device),
            src,
            labelled.examples,
            params=params,
            n_classes=len(names),
            pool=pool,
            batch_size=batch_size,
        )
    ok = pred.n_windows > 0
    y = np.array([e.label for e in labelled.examples], np.int64)
    top = np.where(ok, np.nan_to_num(pred.probs, nan=-1.0).argmax(1), -1)
    matrix = scores.confusion(y[ok], top[ok], n_classes=len(names))
    summary = scores.summarise(matrix, names)
    skipped: dict[str, int] = {}
    for s in pred.skipped.values():
        skipped[s.code] = skipped.get(s.code, 0) + 1
    result = {
        **summary,
        "source": src.uri,
        "labels": labels,
        "model": model.identity,
        "params": params.to_dict(),
        "examples": len(labelled.examples),
        "windows": int(pred.n_windows.sum()),
        "skipped": skipped,
        "pointing_game": pred.pointing_game(),
        "boxed_examples": int((~np.isnan(pred.pointed)).sum()),
    }
    result["warning"] = wrong_reasons(summary["macro_f1"], result["pointing_game"])
    dst = open_store(out, client_factory=make)
    dst.put("metrics.json", (json.dumps(result, indent=1) + "\n").encode())
    conf = {
        "class_names": names,
        "rows": "true",
        "columns": "predicted",
        "matrix": summary["confusion"],
    }
    dst.put("confusion.json", (json.dumps(conf, indent=1) + "\n").encode())
    title = f"{src.uri}: macro-F1 {summary['macro_f1']:.3f}, accuracy {summary['accuracy']:.3f}"
    dst.put("confusion.png", scores.confusion_png(matrix, names, title=title))
    dst.put("predictions.csv", _predictions_csv(labelled.examples, pred, names).encode())
    return result


def _predictions_csv(examples, pred, names) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "key",
            "start_s",
            "end_s",
            "true",
            "predicted",
            "probability",
            "true_probability",
            "correct",
            "n_windows",
            "pointed",
            "error_code",
        ]
    )
    for i, ex in enumerate(examples):
        start = "" if ex.start_s is None else ex.start_s
        end = "" if ex.end_s is None else ex.end_s
        if pred.n_windows[i] == 0:
            code = pred.skipped[ex.key].code if ex.key in pred.skipped else ""
            w.writerow([ex.key, start, end, names[ex.label], "", "", "", "", 0, "", code])
            continue
        p = pred.probs[i]
        k = int(p.argmax())
        w.writerow(
            [
                ex.key,
                start,
                end,
                names[ex.label],
                names[k],
                f"{p[k]:.6f}",
                f"{p[ex.label]:.6f}",
                int(k == ex.label),
                int(pred.n_windows[i]),
                "" if np.isnan(pred.pointed[i]) else f"{pred.pointed[i]:.3f}",
                "",
            ]
        )
    return buf.getvalue()
