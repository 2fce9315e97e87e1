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
from echocam.explain.encoder import Result, read
from echocam.explain.pipeline import Explainer, Source
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
    from echocam.explain.model import load_model_from

    model = load_model_from(settings)
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
    try:
        arrays = {}
        if "cam" in written:
            with np.load(io.BytesIO(read(result.files[written["cam"]]))) as npz:
                arrays = {k: npz[k] for k in npz.files}

        def image(name: str) -> Image.Image | None:
            if name not in written:
                return None
            return _image(result, written.get(f"{name}_tiles", [written[name]]))

        return Explanation(
            record=record,
            spectrogram=image("spectrogram"),
            overlay=image("overlay"),
            arrays=arrays,
            inputs=[_image(result, [k]) for k in written.get("inputs", [])],
        )
    finally:
        result.close()


def _image(result: Result, keys: list[str]) -> Image.Image:
    """The image whose tiles (or one image) are ``keys``, whole: a notebook holds it."""
    tiles = [Image.open(io.BytesIO(read(result.files[k]))) for k in keys]
    if len(tiles) == 1:
        return tiles[0]
    whole = Image.new(tiles[0].mode, (sum(t.width for t in tiles), tiles[0].height))
    if tiles[0].mode == "P":
        whole.putpalette(tiles[0].getpalette())
    x = 0
    for t in tiles:
        whole.paste(t, (x, 0))
        x += t.width
    return whole


def explain_file(path: str | Path, **kwargs: Any) -> Explanation:
    """Explain the audio file at ``path`` (see :func:`explain_bytes` for the keywords)."""
    path = Path(path)
    return explain_bytes(path.read_bytes(), name=path.name, **kwargs)
