"""A small API for notebooks: explain one recording, get arrays and PIL images back."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from echocam.errors import from_code
from echocam.pipeline import Explainer, Source
from echocam.settings import Params, Settings, params_for_model


@dataclass
class Explanation:
    """One recording explained: its record, its images and the arrays of ``cam.npz``."""

    record: dict[str, Any]
    spectrogram: Image.Image | None  # None (and so on) when ``outputs`` leaves it out
    overlay: Image.Image | None
    arrays: dict[str, np.ndarray]  # window_starts_s, class_ids, cams, ... (spectrogram_db: db)
    inputs: list[Image.Image]  # 224x224 model inputs, with save_inputs=True


@cache
def _explainer(settings: Settings, params: Params, explicit: frozenset[str]) -> Explainer:
    from echocam.local import load

    model = load(settings)
    params = params_for_model(params, model.params, explicit=explicit)
    return Explainer.from_settings(model, params, settings)


def explain_bytes(
    data: bytes,
    *,
    name: str = "recording.wav",
    weights: str = "imagenet",
    device: str = "auto",
    **params: Any,
) -> Explanation:
    """Explain audio ``data``; ``params`` are :class:`~echocam.settings.Params` fields.

    Raises an :class:`~echocam.errors.EchoCamError` (with ``.code``) for bad input.  The model
    is loaded once per (weights, device, params) and reused.  A trained checkpoint's analysis
    parameters are used unless ``params`` names others (then ``ParamsMismatch``).
    """
    settings = Settings(weights=weights, device=device)
    explainer = _explainer(settings, Params(**params), frozenset(params))
    (result,) = explainer.explain([Source(name, data, len(data))])
    record = result.record
    if record["status"] != "ok":
        raise from_code(record["error_code"], record["error_message"])
    written = record["outputs"]
    arrays = {}
    if "cam" in written:
        with np.load(io.BytesIO(result.files[written["cam"]])) as npz:
            arrays = {k: npz[k] for k in npz.files}

    def image(name: str) -> Image.Image | None:
        return Image.open(io.BytesIO(result.files[written[name]])) if name in written else None

    return Explanation(
        record=record,
        spectrogram=image("spectrogram"),
        overlay=image("overlay"),
        arrays=arrays,
        inputs=[Image.open(io.BytesIO(result.files[k])) for k in written.get("inputs", [])],
    )


def explain_file(path: str | Path, **kwargs: Any) -> Explanation:
    """Explain the audio file at ``path`` (see :func:`explain_bytes` for the keywords)."""
    path = Path(path)
    return explain_bytes(path.read_bytes(), name=path.name, **kwargs)
