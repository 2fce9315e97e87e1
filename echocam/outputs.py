"""A computed recording's files (spectrogram and overlay PNGs, ``cam.npz``) and its ok record.

The last stage of the pipeline, on the CPU: windows are stitched along time into one image per
recording, encoded, and described by the record.  Pure: arrays in, bytes and a record out.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from echocam import colormaps, detections, records, render
from echocam.audio import Audio
from echocam.keys import output_key
from echocam.localise import Axes, region_evidence
from echocam.records import Record
from echocam.settings import Params

SPECTROGRAM, OVERLAY, CAM = "spectrogram.png", "overlay", "cam.npz"  # overlay.{jpg,webp,png}
SELECTIONS, LABELS = "selections.txt", "labels.txt"

# Per-window arrays that go into cam.npz and the record, stacked per recording.
PER_WINDOW = ("spectrogram_db", "class_ids", "logits", "probabilities", "top_ids", "top_probs",
              "cams")  # fmt: skip


@dataclass
class Result:
    """A recording's record and its output files (relative key → bytes), to be written first."""

    record: Record
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class ComputedRecording:
    """A recording after the device stage: per-window arrays and its mean class probabilities.

    ``windows[name]`` holds output ``name`` of every window in time order: ``spectrogram_db``
    (n_mels, t) float32, ``spectrogram_rgb`` (n_mels, t, 3) uint8, ``overlay`` (k, n_mels, t, 3)
    uint8, ``cams`` (k, h, w) float32, ``class_ids``/``logits``/``probabilities`` (k,),
    ``top_ids``/``top_probs`` (top_k,), the evidence's device half (``peak`` (k,) int64 and
    ``evidence_mask`` (k, n_mels, t) bool: :func:`echocam.localise.peaks_and_masks` of the
    overlay's display maps) and, with ``save_inputs``, ``inputs`` (3, 224, 224) uint8.
    """

    audio: Audio
    starts: np.ndarray  # (w,) window start samples
    length: int  # window length, samples
    windows: dict[str, list[np.ndarray]]
    mean_probs: np.ndarray  # (classes,) mean over the windows
    decode_s: float
    compute_s: float


def encode(
    recording: ComputedRecording,
    base: Record,
    *,
    params: Params,
    class_names: Sequence[str],
    model_sha256: str,
) -> Result:
    """The files ``params.outputs`` names and the ok record (``base`` completed)."""
    p, names = params, class_names
    key = base["source_key"]
    want = set(p.outputs)
    level = p.png_compress_level
    columns = np.rint(recording.starts / p.hop_length).astype(np.int64)
    files: dict[str, bytes] = {}
    written: dict[str, Any] = {}
    image_sizes: dict[str, list[int]] = {}
    if "spectrogram" in want:
        spec = render.stitch(recording.windows["spectrogram_rgb"], columns)  # (m, t, 3)
        magma = colormaps.lut("magma")
        written["spectrogram"] = output_key(key, SPECTROGRAM)
        files[written["spectrogram"]] = render.encode_palette_png(
            render.palette_index(spec, palette=magma), palette=magma, compress_level=level
        )
        image_sizes["spectrogram"] = [int(spec.shape[0]), int(spec.shape[1])]
    if "overlay" in want:
        ov = render.stitch(recording.windows["overlay"], columns)  # (k, m, t, 3): a band per class
        ov = ov.reshape(-1, *ov.shape[2:])  # (k*m, t, 3)
        ext, data = render.encode_image(
            ov, fmt=p.overlay_format, quality=p.overlay_quality, compress_level=level
        )
        written["overlay"] = output_key(key, f"{OVERLAY}.{ext}")
        files[written["overlay"]] = data
        image_sizes["overlay"] = [int(ov.shape[0]), int(ov.shape[1])]
    starts_s = recording.starts / p.sample_rate
    h = {name: np.stack(recording.windows[name]) for name in PER_WINDOW}
    ev = _evidence(recording, starts_s, params=p)
    if "cam" in want:
        written["cam"] = output_key(key, CAM)
        files[written["cam"]] = _npz(
            h, ev, starts_s, db="db" in want, params=p, names=names, model_sha256=model_sha256
        )
    if p.save_inputs:
        written["inputs"] = []
        for j, img in enumerate(recording.windows["inputs"]):
            written["inputs"].append(output_key(key, f"inputs/window_{j:05d}.png"))
            files[written["inputs"][-1]] = render.encode_png(
                img.transpose(1, 2, 0), compress_level=level
            )
    if "detections" in want:
        written["selections"] = output_key(key, SELECTIONS)
        written["labels"] = output_key(key, LABELS)

    windows = [
        {
            "start_s": round(float(start), 6),
            "predictions": [
                records.prediction(i, q, names)
                for i, q in zip(h["top_ids"][j], h["top_probs"][j], strict=True)
            ],
            "explained": [
                {
                    **records.prediction(i, q, names, logit),
                    **{name: round(float(ev[name][j, c]), 6) for name in detections.EVIDENCE},
                }
                for c, (i, q, logit) in enumerate(
                    zip(h["class_ids"][j], h["probabilities"][j], h["logits"][j], strict=True)
                )
            ],
        }
        for j, start in enumerate(starts_s)
    ]
    top = np.argsort(-recording.mean_probs, kind="stable")[: p.top_k]
    record = records.succeeded(
        base,
        audio=recording.audio,
        sample_rate=p.sample_rate,
        window_seconds=recording.length / p.sample_rate,
        windows=windows,
        top_predictions=[records.prediction(i, recording.mean_probs[i], names) for i in top],
        outputs=written,
        image_sizes=image_sizes,
    )
    if "detections" in want:
        found = detections.selections(
            detections.rows(record, min_probability=p.min_probability),
            gap_s=p.hop_length / p.sample_rate,
        )
        files[written["selections"]] = detections.raven_table(found).encode()
        files[written["labels"]] = detections.audacity_labels(found).encode()
    return Result(record, files)


def _npz(
    h: dict[str, np.ndarray],
    evidence: dict[str, np.ndarray],
    starts_s: np.ndarray,
    *,
    db: bool,
    params: Params,
    names: Sequence[str],
    model_sha256: str,
) -> bytes:
    """``cam.npz`` (fields and dtypes: README, Outputs), uncompressed.

    The explained classes' names sit beside their ids (the model's full list is in run.json);
    with ``db``, the dB spectrogram as float16 (within 0.032 dB of float32 from -80 to 0 dB).
    Not deflated: without the dB it is a few kB, and deflating the dB saves a third of it for
    ~14 ms of CPU per window (``np.savez_compressed``; ``benchmarks/bench_outputs.py``).
    """
    arrays = {
        "window_starts_s": starts_s,
        "class_ids": h["class_ids"],
        "class_names": np.array([[names[i] for i in row] for row in h["class_ids"]], dtype=str),
        "logits": h["logits"],
        "probabilities": h["probabilities"],
        "cams": h["cams"],
        **evidence,
        "params": np.array(json.dumps(params.to_dict(), sort_keys=True)),
        "model_sha256": np.array(model_sha256),
    }
    if db:
        arrays["spectrogram_db"] = h["spectrogram_db"].astype(np.float16)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _evidence(
    recording: ComputedRecording, starts_s: np.ndarray, *, params: Params
) -> dict[str, np.ndarray]:
    """Peak and box of every window's display maps: name → (windows, k) float64.

    From the peaks and thresholded maps the device stage kept (the maps the overlay drew):
    only the connected region around each peak is found here.
    """
    peaks, masks = recording.windows["peak"], recording.windows["evidence_mask"]
    axes = Axes.for_params(params, frames=masks[0].shape[-1])
    out = {name: np.empty((len(peaks), peaks[0].shape[0])) for name in detections.EVIDENCE}
    for j, start in enumerate(starts_s):
        for c, (peak, mask) in enumerate(zip(peaks[j], masks[j], strict=True)):
            e = region_evidence(mask, int(peak), axes=axes, offset_s=float(start))
            for name in detections.EVIDENCE:
                out[name][j, c] = getattr(e, name)
    return out
