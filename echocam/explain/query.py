"""Query vectors for "more like this": a box drawn in a recording, or a clip of audio, embedded
with a run's model and analysis parameters as the run embedded its own windows and calls."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from echocam.bucket.embeddings import vectors
from echocam.explain.cam import CellGrid
from echocam.explain.embed import activity_maps, box_embedding
from echocam.explain.localise import Axes
from echocam.explain.model import LoadedModel
from echocam.search import Box
from echocam.settings import Params
from echocam.signal.frontend import FrontEnd, windowed


def box_vector(model: LoadedModel, params: Params, data: bytes, box: Box) -> np.ndarray:
    """The embedding (dim,) of ``box`` in the recording ``data``.

    The window is the one of the recording's analysis windows that holds most of the box
    (nearest its centre on a tie); the box's cells are weighted by the window's activity map,
    as a run weighs its detections' boxes.  Without Hz, the box spans every band.
    """
    cut = windowed(data, params=params)
    spans = cut.starts / params.sample_rate
    length_s = cut.length / params.sample_rate
    overlap = np.minimum(spans + length_s, box.end_s) - np.maximum(spans, box.begin_s)
    centre = np.abs(spans + length_s / 2 - (box.begin_s + box.end_s) / 2)
    j = int(np.lexsort((centre, -overlap))[0])
    if overlap[j] <= 0:
        raise ValueError(
            f"{box.source_key}: {box.begin_s:g}-{box.end_s:g} s is beyond its "
            f"{cut.audio.duration_s:g} s"
        )
    net = model.net.at_output_stride(params.output_stride).eval()
    with torch.inference_mode():
        x = FrontEnd(params)(torch.from_numpy(np.ascontiguousarray(cut.window(j)))[None])
        _, features = net(x)
    axes = Axes.for_params(params, frames=_frames(params, cut.length))
    low = 0.0 if box.low_hz is None else box.low_hz
    high = axes.top_hz if box.high_hz is None else box.high_hz
    start = float(spans[j])
    relative = (box.begin_s - start, box.end_s - start, low, high)
    return box_embedding(
        features[0].numpy(),
        activity_maps(features)[0, 0].numpy(),
        relative,
        axes=axes,
        grid=CellGrid.of(params),
    )


def clip_vector(explainer, data: bytes, *, windows: bool) -> np.ndarray:
    """The embedding (dim,) of a clip of audio, through ``explainer`` (an
    ``echocam.explain.pipeline.Explainer`` with the ``embeddings`` output) as a run would
    embed it: its windows' mean with ``windows``, else its most probable detection's."""
    from echocam.explain.encoder import read
    from echocam.explain.pipeline import Source

    (result,) = explainer.explain([Source("query", data, len(data))])
    try:
        record = result.record
        if record["status"] != "ok":
            raise ValueError(f"the query audio: {record['error_message']}")
        table = pq.read_table(pa.BufferReader(read(result.files[record["outputs"]["embeddings"]])))
    finally:
        result.close()
    is_window = table.column("class_name").is_null().to_numpy(zero_copy_only=False)
    v = vectors(table)
    if windows:
        return v[is_window].mean(axis=0)
    probs = np.where(is_window, -1.0, table.column("probability").fill_null(-1).to_numpy())
    return v[int(np.argmax(probs))]


def _frames(params: Params, length: int) -> int:
    from echocam.signal.spectrogram import frame_count

    return frame_count(length, hop_length=params.hop_length)
