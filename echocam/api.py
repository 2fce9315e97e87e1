"""A small API for notebooks: explain one recording, get arrays and PIL images back; search a
run's embeddings for more like one call, get a DataFrame back."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from echocam.errors import InvalidParams, from_code
from echocam.explain.encoder import Result, read
from echocam.explain.pipeline import Explainer, Source
from echocam.settings import Params, Settings, params_for_model

if TYPE_CHECKING:
    import pandas as pd


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


def search(
    runs: str | Sequence[str],
    *,
    like: str | None = None,
    like_detection: str | None = None,
    like_audio: str | Path | bytes | None = None,
    top: int = 10,
    class_name: str | None = None,
    min_similarity: float | None = None,
    windows: bool = False,
    weights: str | None = None,
    settings: Settings | None = None,
    distributed: bool = False,
    parts: int = 0,
    timeout_s: float = 600.0,
    exclude_reviewed: bool | str = False,
) -> pd.DataFrame:
    """ "More like this": the ``top`` boxes (or, with ``windows``, windows) of ``runs`` most
    like the query, best first, as a DataFrame with a ``similarity`` (cosine) column: one row a
    window (its detections share its call's box), never a ``like_detection``'s own window.

    The query is exactly one of ``like`` (``KEY@T0-T1`` or ``KEY@T0-T1@F0-F1``: a box in a
    recording of the runs, s and Hz), ``like_detection`` (a detection's id,
    ``KEY@WINDOW_START#CLASS``) or ``like_audio`` (a file or its bytes).  Boxes and audio are
    embedded with the runs' model (``weights`` where it now lives elsewhere) and parameters.
    The runs must share one model: other models' vectors do not compare.

    The products run on ``settings.device`` (``auto``: CUDA where there is one).
    ``distributed``: the runs' tables (in S3) are scanned by the Celery workers of
    ``ECHOCAM_BROKER_URL``, in ``parts`` parts of whole row groups each (0: one a row group,
    at most 256), and the caller merges their best rows: the same answer as a local search.

    ``exclude_reviewed``: leave out the detections with a standing yes or no verdict in their
    run's ``_reviews/`` (True: anyone's; a name: that reviewer's).
    """
    import pandas as pd

    from echocam.bucket.runs import RUN_NAME
    from echocam.bucket.storage import client_factory, open_store, read_json
    from echocam.explain.device import resolve_device
    from echocam.search import (
        detection_id,
        parse_detection_id,
        run_batches,
        scan,
        stored_vector,
    )

    settings = settings or Settings.from_env()
    device = resolve_device(settings.device)
    uris = [runs] if isinstance(runs, str) else list(runs)
    if sum(q is not None for q in (like, like_detection, like_audio)) != 1:
        raise InvalidParams("give exactly one query: like, like_detection or like_audio")
    stores = [open_store(u, client_factory=client_factory(settings)) for u in uris]
    described = [read_json(s, RUN_NAME) for s in stores]
    for uri, run in zip(uris, described, strict=True):
        if run is None:
            raise InvalidParams(f"{uri}: no run.json: not the output of an echocam run")
    models = {run["model"]["sha256"] for run in described}
    if len(models) > 1:
        raise InvalidParams("the runs were made by different models: their vectors do not compare")
    exclude: list[tuple[str, int]] = []  # the query's own window
    if like_detection is not None:
        key, begin, name = parse_detection_id(like_detection)
        query, row = stored_vector(stores, key, begin, name, windows=windows)
        exclude.append((key, row))
    else:
        query = _embedded_query(described[0], uris[0], like, like_audio, windows, weights, settings)
    options = dict(
        top=top, windows=windows, class_name=class_name, min_similarity=min_similarity,
        exclude=exclude,
    )  # fmt: skip
    found = []
    for uri, store in zip(uris, stores, strict=True):
        reviewed = _reviewed(store, exclude_reviewed) if exclude_reviewed else set()
        run_options = {**options, "top": top + len(reviewed)}  # then drop the reviewed ones
        if distributed:
            rows = _search_on_workers(
                uri, store, query, run_options, parts=parts, timeout_s=timeout_s,
                settings=settings,
            )  # fmt: skip
            part = pd.DataFrame(rows) if rows else None
        else:
            t = scan(run_batches(store), query, **run_options, device=device)
            part = t.drop_columns(["vector"]).to_pandas() if t.num_rows else None
        if part is not None and reviewed:
            ids = [
                detection_id(k, b, c) if isinstance(c, str) else None
                for k, b, c in zip(part["source_key"], part["begin_s"], part["class_name"],
                                   strict=True)
            ]  # fmt: skip
            part = part[[i not in reviewed for i in ids]]
        if part is not None and len(part):
            found.append(part.assign(run=uri))
    if not found:
        return pd.DataFrame(columns=["run", "source_key", "similarity"])
    best = pd.concat(found, ignore_index=True)
    best = best.sort_values("similarity", ascending=False, kind="stable").head(top)
    best["detection_id"] = [
        None if c is None or pd.isna(c) else detection_id(k, b, c)
        for k, b, c in zip(best["source_key"], best["begin_s"], best["class_name"], strict=True)
    ]
    best["link"] = ["/rec?key=" + quote(k, safe="") for k in best["source_key"]]
    first = ["similarity", "source_key", "begin_s", "end_s", "class_name", "probability", "box"]
    order = first + [c for c in best.columns if c not in first]
    return best[order].reset_index(drop=True)


def _reviewed(store, who: bool | str) -> set[str]:
    """Ids of a run's detections with a standing yes or no (``who``: True, or a reviewer)."""
    from echocam.bucket.reviews import JUDGED, Reviews

    reviewer = None if who is True else str(who)
    return {
        v["id"] for v in Reviews.load(store).standing(reviewer=reviewer) if v["verdict"] in JUDGED
    }


def _search_on_workers(
    uri, store, query, options, *, parts: int, timeout_s: float, settings: Settings
) -> list[dict]:
    """A run's best rows, its table's row groups scanned by the Celery workers in ``parts``
    parts (``worker.tasks.search``), merged here in part order."""
    import uuid

    from echocam.bucket import progress
    from echocam.bucket.protocol import SEARCH_TASK
    from echocam.search import distinct_windows, gather_parts, row_groups
    from worker.app import app

    if not uri.startswith("s3://"):
        raise InvalidParams(f"--distributed searches runs in S3, which workers read; not {uri}")
    n = row_groups(store)
    if not n:
        return []
    k = min(n, parts or 256)
    groups = [list(range(i * n // k, (i + 1) * n // k)) for i in range(k)]  # contiguous
    reply = f"echocam:search:{uuid.uuid4().hex}"
    vector = np.asarray(query, np.float32).tolist()
    for i, part in enumerate(groups):
        app.send_task(SEARCH_TASK, args=[uri, i, part, vector, options, reply],
                      queue=settings.queue)  # fmt: skip
    answers = gather_parts(progress.client(settings.broker_url), reply, k, timeout_s=timeout_s)
    rows = [row for answer in answers for row in answer]  # in row-group order
    rows.sort(key=lambda r: -r["similarity"])  # stable: ties keep the table's order
    keep = distinct_windows([r["source_key"] for r in rows], [r["window_index"] for r in rows])
    return [rows[i] for i in keep[: options["top"]]]


def _run_model(run, uri, weights, settings):
    """The run's model (``weights``: where it lives now), checked against run.json's sha256."""
    import dataclasses

    from echocam.explain.model import load_model_from

    weights = weights or run["model"]["weights"]
    model = load_model_from(dataclasses.replace(settings, weights=weights))
    if model.sha256 != run["model"]["sha256"]:
        raise InvalidParams(
            f"{uri} was made by model {run['model']['sha256'][:12]}, but "
            f"{weights} is {model.sha256[:12]}: give the run's weights"
        )
    return model


def embed_box(
    run: dict, like: str, *, input_store, weights: str | None = None, settings=None, uri: str = ""
):
    """The query vector (dim,) of a box ``KEY@T0-T1[@F0-F1]`` (s, Hz) in a recording of the run
    described by ``run`` (run.json), read from ``input_store``, embedded with the run's model and
    parameters as the run embedded its own boxes."""
    from echocam.explain.query import box_vector
    from echocam.search import Box

    settings = settings or Settings.from_env()
    model = _run_model(run, uri or run.get("output", ""), weights, settings)
    params = Params.from_dict(run["params"])
    box = Box.parse(like)
    data, _ = input_store.get(box.source_key, max_bytes=params.max_bytes)
    return box_vector(model, params, data, box)


def _embedded_query(run, uri, like, like_audio, windows, weights, settings):
    """The query vector of a box (``like``) or a clip (``like_audio``), embedded with the run's
    model and parameters."""
    import dataclasses

    from echocam.bucket.storage import client_factory, open_store
    from echocam.explain.query import clip_vector

    if like is not None:
        src = open_store(run["input"], client_factory=client_factory(settings))
        return embed_box(run, like, input_store=src, weights=weights, settings=settings, uri=uri)
    model = _run_model(run, uri, weights, settings)
    data = like_audio if isinstance(like_audio, bytes) else Path(like_audio).read_bytes()
    params = dataclasses.replace(Params.from_dict(run["params"]), outputs=("embeddings",))
    explainer = Explainer(model, params, device=settings.device)
    return clip_vector(explainer, data, windows=windows)
