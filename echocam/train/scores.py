"""Classification metrics (confusion matrix, precision, recall, F1) and the confusion PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def confusion(y_true: Sequence[int], y_pred: Sequence[int], *, n_classes: int) -> np.ndarray:
    """(classes, classes) int64 counts: row = true class, column = predicted class."""
    m = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(m, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return m


def summarise(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision / recall / F1 / support of a confusion matrix.

    A class never predicted has precision 0; a class with no examples is left out of the macro
    average (its recall is undefined).
    """
    m = np.asarray(matrix, np.float64)
    tp = np.diag(m)
    support, predicted = m.sum(1), m.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    total = m.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "n": int(total),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "class_names": list(class_names),
        "confusion": np.asarray(matrix, np.int64).tolist(),
    }


def confusion_png(matrix: np.ndarray, class_names: Sequence[str], *, title: str = "") -> bytes:
    """A confusion matrix as a PNG: true classes down the left, predicted along the bottom.

    Cells are shaded by the fraction of their row (recall) and show the count.
    """
    m = np.asarray(matrix, np.int64)
    n = len(class_names)
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=12)
    cell = max(36, min(72, 640 // max(n, 1)))
    label_w = int(max(font.getlength(c) for c in class_names)) + 16
    left, top = label_w + 24, 36
    heading = title or "confusion matrix"
    width = max(left + n * cell + 16, int(font.getlength(heading)) + 16)
    height = top + n * cell + label_w + 28
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 8), heading, fill="black", font=font)
    rows = m.sum(1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    for i in range(n):
        for j in range(n):
            shade = int(255 - 200 * frac[i, j])
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=(shade, shade, 255), outline="grey")
            text = str(m[i, j])
            colour = "white" if frac[i, j] > 0.6 else "black"
            tw = small.getlength(text)
            draw.text((x0 + (cell - tw) / 2, y0 + cell / 2 - 7), text, fill=colour, font=small)
        draw.text((8, top + i * cell + cell / 2 - 8), class_names[i], fill="black", font=font)
    # predicted class names along the bottom, rotated to read upwards
    for j, name in enumerate(class_names):
        w = int(font.getlength(name)) + 4
        label = Image.new("RGB", (w, 20), "white")
        ImageDraw.Draw(label).text((2, 1), name, fill="black", font=font)
        label = label.rotate(90, expand=True)
        img.paste(label, (left + j * cell + cell // 2 - 10, top + n * cell + 6))
    draw.text((8, height - 22), "rows: true class; columns: predicted", fill="grey", font=small)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
