"""A computed recording's files (the images, ``cam.npz``, detections) and its ok record.

The last stage of the pipeline, on the CPU: windows are stitched along time into one image per
recording (or, when wider than :data:`TILE_COLUMNS`, tiles of that width), encoded as
``params.outputs`` asks, and described by the record.  A long recording arrives a block of
windows at a time (:class:`Encoder`), and nothing of it is held whole but its small per-window
arrays: images are handed out a tile at a time, the dB spectrogram streams into ``cam.npz``,
and files above :data:`SPOOL_BYTES` wait on disk, not in memory, until they are written.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from echocam.bucket import detections, embeddings, records
from echocam.bucket.keys import output_key
from echocam.bucket.records import Record
from echocam.explain import embed, render
from echocam.explain.cam import CellGrid
from echocam.explain.localise import Axes, region_evidence
from echocam.explain.npz import NpzWriter
from echocam.settings import Params
from echocam.signal import colormaps
from echocam.signal.audio import Audio
from echocam.signal.spectrogram import frame_count

SPECTROGRAM, OVERLAY, CAM = "spectrogram", "overlay", "cam.npz"  # images: .png, .jpg, .webp
SELECTIONS, LABELS, EMBEDDINGS = "selections.txt", "labels.txt", embeddings.NAME

# The widest image written whole: ~149 s at the defaults (hop 200 at 22050 Hz), a size every
# viewer opens.  A wider recording's images are tiles of this width (the last narrower):
# spectrogram/tile_00000.png, overlay/tile_00000.jpg, ... (a 30-minute recording: 13 each).
TILE_COLUMNS = 16384
SPOOL_BYTES = 4 << 20  # an output file larger than this waits in a temporary file

# Small per-window arrays that go into cam.npz and the record, gathered per recording.
PER_WINDOW = ("class_ids", "logits", "probabilities", "top_ids", "top_probs", "cams")

Blob = bytes | BinaryIO  # an output file's bytes, or a temporary file holding them


@dataclass
class Result:
    """A recording's record and its output files (relative key → bytes), to be written first.

    Large files are temporary files (see :data:`SPOOL_BYTES`): read them with :func:`read`,
    and :meth:`close` the result once written.
    """

    record: Record
    files: dict[str, Blob] = field(default_factory=dict)
    embeddings: pa.Table | None = None  # the embeddings file's table, for the chunk's shard

    def close(self) -> None:
        for blob in self.files.values():
            if not isinstance(blob, bytes):
                blob.close()


def read(blob: Blob) -> bytes:
    """The bytes of an output file."""
    if isinstance(blob, bytes):
        return blob
    blob.seek(0)
    return blob.read()


def spool(data: bytes) -> Blob:
    """``data`` itself, or a temporary file holding it when larger than :data:`SPOOL_BYTES`."""
    if len(data) <= SPOOL_BYTES:
        return data
    f = tempfile.TemporaryFile()  # noqa: SIM115 (closed by Result.close, or when collected)
    f.write(data)
    return f


@dataclass(frozen=True)
class WindowArrays:
    """What the device stage hands the encoder, per window: ``field[i]`` is window ``i``'s array
    (a row of a batch's host array, or a list of such rows: views, not copies).

    ``k`` is the number of explained classes, ``t`` the window's frames, ``h × w`` the CAM grid.
    """

    spectrogram_db: Sequence[np.ndarray]  # (n_mels, t) float32, dB re the window's maximum
    # (n_mels, t) uint8: each pixel's magma colour (its index in the palette PNG's palette)
    spectrogram_index: Sequence[np.ndarray]
    overlay: Sequence[np.ndarray]  # (k, n_mels, t, 3) uint8: a band per explained class
    class_ids: Sequence[np.ndarray]  # (k,) int64, the explained classes
    logits: Sequence[np.ndarray]  # (k,) float32
    probabilities: Sequence[np.ndarray]  # (k,) float32
    top_ids: Sequence[np.ndarray]  # (top_k,) int64, the predicted classes
    top_probs: Sequence[np.ndarray]  # (top_k,) float32
    cams: Sequence[np.ndarray]  # (k, h, w) float32, raw CAMs
    # the evidence's device half, from the display maps the overlay drew
    # (:func:`echocam.explain.localise.peaks_and_masks`, ``band_floor``):
    peak: Sequence[np.ndarray]  # (k,) int64, flat index of each map's peak
    evidence_mask: Sequence[np.ndarray]  # (k, n_mels, t) bool, the map >= box_threshold
    floor_db: Sequence[np.ndarray]  # (n_mels,) float32, each band's median over the window
    inputs: Sequence[np.ndarray] | None = None  # (3, h, w) uint8 model inputs, with save_inputs
    # with the embeddings output: the layer4 features, their mean (the window's embedding) and
    # the activity map (``echocam.explain.embed``)
    features: Sequence[np.ndarray] | None = None  # (c, h, w) float16
    embedding: Sequence[np.ndarray] | None = None  # (c,) float32
    activity: Sequence[np.ndarray] | None = None  # (1, h, w) float32

    def __len__(self) -> int:
        return len(self.cams)

    @classmethod
    def gather(cls, rows: Sequence[tuple[WindowArrays, int]]) -> WindowArrays:
        """Window ``i`` of each ``(arrays, i)`` in ``rows``, in that order."""
        first = rows[0][0]
        return cls(
            **{
                f.name: None
                if getattr(first, f.name) is None
                else [getattr(arrays, f.name)[i] for arrays, i in rows]
                for f in fields(cls)
            }
        )


@dataclass(frozen=True)
class WindowBlock:
    """Consecutive windows of one recording after the device stage, from window ``first`` on."""

    first: int
    arrays: WindowArrays

    def __len__(self) -> int:
        return len(self.arrays)


class Encoder:
    """The files ``params.outputs`` names and the ok record of one recording, from its windows
    a :class:`WindowBlock` at a time.

    Blocks must arrive in time order and cover every window once; the outputs are the same
    whatever the blocks (tested byte for byte).  ``seconds`` is the time spent encoding.
    """

    def __init__(
        self,
        *,
        audio: Audio,
        starts: np.ndarray,
        length: int,
        base: Record,
        params: Params,
        class_names: Sequence[str],
        model_sha256: str,
    ):
        self.audio, self.starts, self.length, self.base = audio, starts, length, base
        self.params, self.names, self.model_sha256 = params, class_names, model_sha256
        self.want = set(params.outputs)
        n, k = len(starts), len(params.classes) or params.top_k
        self.frames = frame_count(length, hop_length=params.hop_length)
        self.columns = np.rint(starts / params.hop_length).astype(np.int64)
        self.starts_s = starts / params.sample_rate
        self.width = int(self.columns[-1]) + self.frames
        self.tiled = self.width > TILE_COLUMNS
        tile = TILE_COLUMNS if self.tiled else self.width
        self.rows = {"spectrogram": params.n_mels, "overlay": k * params.n_mels}
        self.spectrogram = render.Tiles(width=self.width, tile=tile)
        self.overlay = render.Tiles(width=self.width, tile=tile)
        self.tiles: dict[str, list[str]] = {SPECTROGRAM: [], OVERLAY: []}
        # the per-window arrays of cam.npz and the record, stacked once every window is in
        self.small: dict[str, list[np.ndarray]] = {name: [] for name in PER_WINDOW}
        self.evidence = {name: np.empty((n, k)) for name in detections.EVIDENCE}
        self.npz_file: BinaryIO | None = None
        self.npz: NpzWriter | None = None
        if "cam" in self.want:
            self.npz_file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
            self.npz = NpzWriter(self.npz_file)
        if "db" in self.want:  # float16: within 0.032 dB of float32 from -80 to 0 dB
            shape = (n, params.n_mels, self.frames)
            self.npz.begin("spectrogram_db", shape=shape, dtype=np.float16)
        self.embeddings = Embeddings(base["source_key"]) if "embeddings" in self.want else None
        self.files: dict[str, Blob] = {}
        self.inputs: list[str] = []
        self.seen = 0  # windows added
        self.seconds = 0.0

    def add(self, part: WindowBlock) -> None:
        """Encode the windows of ``part`` (the next ones in time)."""
        t0 = time.perf_counter()
        if part.first != self.seen:
            raise ValueError(f"windows from {part.first} arrived after {self.seen} of them")
        p, key, a = self.params, self.base["source_key"], part.arrays
        if a.spectrogram_db[0].shape != (p.n_mels, self.frames):
            raise ValueError(
                f"windows of {a.spectrogram_db[0].shape} for a recording of "
                f"{(p.n_mels, self.frames)} (n_mels, frames)"
            )
        for i in range(len(part)):
            j = part.first + i
            col = int(self.columns[j])
            if "spectrogram" in self.want:
                for t, tile in self.spectrogram.add(a.spectrogram_index[i][..., None], col):
                    self._image(SPECTROGRAM, t, tile)
            if "overlay" in self.want:
                for t, tile in self.overlay.add(a.overlay[i], col):
                    self._image(OVERLAY, t, tile)
            if "db" in self.want:
                self.npz.write(a.spectrogram_db[i].astype(np.float16))
            for name in PER_WINDOW:
                self.small[name].append(getattr(a, name)[i])
            if p.save_inputs:
                self.inputs.append(output_key(key, f"inputs/window_{j:05d}.png"))
                img = a.inputs[i].transpose(1, 2, 0)
                self.files[self.inputs[-1]] = render.encode_png(
                    img, compress_level=p.png_compress_level
                )
        j0, j1 = part.first, part.first + len(part)
        ev = _evidence(
            a.peak, a.evidence_mask, a.spectrogram_db, a.floor_db, self.starts_s[j0:j1], params=p
        )
        for name, values in ev.items():
            self.evidence[name][j0:j1] = values
        if self.embeddings is not None:
            self.embeddings.add(a, first=j0, starts_s=self.starts_s, params=p)
        self.seen = j1
        self.seconds += time.perf_counter() - t0

    def _image(self, name: str, t: int, tile: np.ndarray) -> None:
        """Encode tile ``t`` of image ``name`` (the whole image when not tiled): the spectrogram
        as a magma-palette PNG, the overlay in ``params.overlay_format``."""
        p = self.params
        level = p.png_compress_level
        if name == SPECTROGRAM:  # (m, t, 1): each pixel's colour is its magma row already
            magma = colormaps.lut("magma")
            index = tile[..., 0]
            ext, data = "png", render.encode_palette_png(index, palette=magma, compress_level=level)
        else:
            rgb = tile.reshape(-1, *tile.shape[-2:])  # overlay (k, m, t, 3): a band per class
            ext, data = render.encode_image(
                rgb, fmt=p.overlay_format, quality=p.overlay_quality, compress_level=level
            )
        out = f"{name}/tile_{t:05d}.{ext}" if self.tiled else f"{name}.{ext}"
        out = output_key(self.base["source_key"], out)
        self.tiles[name].append(out)
        self.files[out] = spool(data)

    def close(self, *, mean_probs: np.ndarray) -> Result:
        """The files and the ok record, once every window was added; ``mean_probs`` (classes,)
        is the recording's mean class probability over its windows."""
        t0 = time.perf_counter()
        n = len(self.starts)
        if self.seen != n:
            raise ValueError(f"{self.seen} of {n} windows were added")
        if "spectrogram" in self.want:
            for t, tile in self.spectrogram.close():
                self._image(SPECTROGRAM, t, tile)
        if "overlay" in self.want:
            for t, tile in self.overlay.close():
                self._image(OVERLAY, t, tile)
        p, names, key = self.params, self.names, self.base["source_key"]
        h = {name: np.stack(arrays) for name, arrays in self.small.items()}
        keys = {name: output_key(key, name) for name in (CAM, SELECTIONS, LABELS, EMBEDDINGS)}
        written: dict[str, Any] = {}
        table = None
        if self.embeddings is not None:
            table = self.embeddings.table(names=names, length_s=self.length / p.sample_rate)
            written["embeddings"] = keys[EMBEDDINGS]
            self.files[keys[EMBEDDINGS]] = spool(embeddings.to_parquet(table, lean=True))
        if "cam" in self.want:
            self._npz(h)
            written["cam"] = keys[CAM]
            self.files[keys[CAM]] = self._spooled(self.npz_file)
        ev = self.evidence
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
                        **{name: _json_number(ev[name][j, c]) for name in detections.EVIDENCE},
                    }
                    for c, (i, q, logit) in enumerate(
                        zip(h["class_ids"][j], h["probabilities"][j], h["logits"][j], strict=True)
                    )
                ],
            }
            for j, start in enumerate(self.starts_s)
        ]
        top = np.argsort(-mean_probs, kind="stable")[: p.top_k]
        images = [name for name in (SPECTROGRAM, OVERLAY) if name in self.want]
        for name in images:  # "spectrogram" and "overlay" name the first tiles when tiled
            written[name] = self.tiles[name][0]
            if self.tiled:
                written[f"{name}_tiles"] = self.tiles[name]
        if "detections" in self.want:
            written["selections"], written["labels"] = keys[SELECTIONS], keys[LABELS]
        if p.save_inputs:
            written["inputs"] = self.inputs
        record = records.succeeded(
            self.base,
            audio=self.audio,
            sample_rate=p.sample_rate,
            window_seconds=self.length / p.sample_rate,
            windows=windows,
            top_predictions=[records.prediction(i, mean_probs[i], names) for i in top],
            outputs=written,
            image_sizes={name: [self.rows[name], self.width] for name in images},
        )
        if self.tiled and images:
            record["tile_columns"] = TILE_COLUMNS
        if "detections" in self.want:
            found = detections.selections(
                detections.rows(
                    record,
                    min_probability=p.min_probability,
                    class_min_probability=dict(p.class_min_probability),
                ),
                gap_s=p.hop_length / p.sample_rate,
            )
            self.files[keys[SELECTIONS]] = detections.raven_table(found).encode()
            self.files[keys[LABELS]] = detections.audacity_labels(found).encode()
        self.seconds += time.perf_counter() - t0
        return Result(record, self.files, table)

    @staticmethod
    def _spooled(f: BinaryIO) -> Blob:
        """A finished temporary file as :func:`spool` would hold it: bytes when small."""
        if f.tell() > SPOOL_BYTES:
            return f
        data = read(f)
        f.close()
        return data

    def _npz(self, h: dict[str, np.ndarray]) -> None:
        """Finish ``cam.npz`` (fields and dtypes: docs/reference/outputs.md), uncompressed.

        The explained classes' names sit beside their ids (the model's full list is in
        run.json); the dB spectrogram, with ``db``, was streamed in as the windows came.  Not
        deflated: without the dB it is a few kB, and deflating the dB saves a third of it for
        ~14 ms of CPU per window (``benchmarks/bench_outputs.py``).
        """
        if "db" in self.want:
            self.npz.end()
        names = np.array([[self.names[i] for i in row] for row in h["class_ids"]], dtype=str)
        for name, array in (
            ("window_starts_s", self.starts_s),
            ("class_ids", h["class_ids"]),
            ("class_names", names),
            ("logits", h["logits"]),
            ("probabilities", h["probabilities"]),
            ("cams", h["cams"]),
            *self.evidence.items(),
            ("params", np.array(json.dumps(self.params.to_dict(), sort_keys=True))),
            ("model_sha256", np.array(self.model_sha256)),
        ):
            self.npz.add(name, array)
        self.npz.close()


class Embeddings:
    """A recording's embeddings (``echocam.explain.embed``), gathered a block at a time: each
    window's, then its call's (the box embedding of its activity map's evidence box) once per
    explained class: a window's detections share it."""

    def __init__(self, source_key: str):
        self.source_key = source_key
        self.rows: list[dict[str, Any]] = []
        self.vectors: list[np.ndarray] = []

    def add(self, a: WindowArrays, *, first: int, starts_s: np.ndarray, params: Params) -> None:
        """The windows of a block, from window ``first``."""
        axes = Axes.for_params(params, frames=a.spectrogram_db[0].shape[-1])
        grid = CellGrid.of(params)
        for i in range(len(a)):
            j, start = first + i, float(starts_s[first + i])
            activity = a.activity[i][0]
            rows, cols = embed.activity_cells(activity, threshold=params.box_threshold)
            call = embed.cells_embedding(a.features[i], activity, rows, cols)
            b = embed.cells_box(rows, cols, shape=activity.shape, axes=axes, grid=grid)
            box = (start + b[0], start + b[1], b[2], b[3])
            self.rows.append({"window": j, "start": start})
            self.vectors.append(a.embedding[i])
            for c, class_id in enumerate(a.class_ids[i]):
                self.rows.append(
                    {"window": j, "start": start, "class_id": int(class_id),
                     "probability": round(float(a.probabilities[i][c]), 6),
                     "box": embed.BOX, "bounds": box}
                )  # fmt: skip
                self.vectors.append(call)

    def table(self, *, names: Sequence[str], length_s: float):
        """The rows as an Arrow table of ``embeddings.schema``, in window order."""
        bounds = [r.get("bounds", (None,) * 4) for r in self.rows]
        vectors = np.stack(self.vectors).astype(np.float16)
        columns = {
            "source_key": [self.source_key] * len(self.rows),
            "window_index": [r["window"] for r in self.rows],
            "begin_s": [round(r["start"], 6) for r in self.rows],
            "end_s": [round(r["start"] + length_s, 6) for r in self.rows],
            "class_name": [names[r["class_id"]] if "class_id" in r else None for r in self.rows],
            "class_id": [r.get("class_id") for r in self.rows],
            "probability": [r.get("probability") for r in self.rows],
            "box": [r.get("box") for r in self.rows],
            **{
                name: [None if b[n] is None else round(b[n], 6) for b in bounds]
                for n, name in enumerate(embeddings.BOX_COLUMNS)
            },
        }
        return embeddings.table(columns, vectors)


def _evidence(
    peaks: list[np.ndarray],
    masks: list[np.ndarray],
    dbs: list[np.ndarray],
    floors: list[np.ndarray],
    starts_s: np.ndarray,
    *,
    params: Params,
) -> dict[str, np.ndarray]:
    """Peak, box and call box of consecutive windows' display maps: name → (windows, k) float64
    (NaN: no call found).

    From the peaks and thresholded maps the device stage kept (the maps the overlay drew) and
    the windows' spectrograms: only the connected region around each peak is looked at here.
    """
    axes = Axes.for_params(params, frames=masks[0].shape[-1])
    out = {name: np.empty((len(peaks), peaks[0].shape[0])) for name in detections.EVIDENCE}
    for j, start in enumerate(starts_s):
        for c, (peak, mask) in enumerate(zip(peaks[j], masks[j], strict=True)):
            e = region_evidence(
                mask, int(peak), axes=axes, offset_s=float(start), db=dbs[j], floor=floors[j]
            )
            for name in detections.EVIDENCE:
                out[name][j, c] = getattr(e, name)
    return out


def _json_number(x: float) -> float | None:
    """A record's number: rounded to 6 places, None for NaN (JSON has no NaN)."""
    return None if np.isnan(x) else round(float(x), 6)
