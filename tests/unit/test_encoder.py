"""What a recording's outputs hold at the defaults and under --outputs / --overlay-format: the
lossless palette spectrogram, the lossy overlay, the lean cam.npz, and their size."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from echocam.bucket import embeddings
from echocam.explain import render
from echocam.explain.cam import CellGrid
from echocam.explain.embed import activity_cells, box_embedding, cells_box
from echocam.explain.localise import Axes
from echocam.explain.pipeline import Explainer, Source
from echocam.settings import DEFAULT_OUTPUTS, Params
from echocam.signal import colormaps
from echocam.signal.colormaps import lut
from echocam.signal.frontend import FrontEnd, windowed
from tests.helpers import SAMPLES, SPECIES, recordings

CLIP = SAMPLES / "S4A03895_20190522_053000.wav"  # 10 s: two windows


_EXPLAINERS: dict = {}  # one per (model, params): the model is the session's


def _explainer(model, params: Params) -> Explainer:
    key = (id(model), params)
    if key not in _EXPLAINERS:
        _EXPLAINERS[key] = Explainer(model, params, device="cpu", batch_size=8)
    return _EXPLAINERS[key]


def explain(model, path, **params):
    """(record, files) of ``path`` explained with ``params``."""
    data = path.read_bytes()
    (result,) = _explainer(model, Params(**params)).explain([Source(path.name, data, len(data))])
    assert result.record["status"] == "ok", result.record
    return result.record, result.files


def front_end(path, params: Params) -> tuple[torch.Tensor, np.ndarray]:
    """(dB (w, n_mels, t), window start samples) of ``path``'s windows, from the front end."""
    decoded = windowed(path.read_bytes(), params=params)
    waves = torch.from_numpy(np.stack([decoded.window(j) for j in range(len(decoded.starts))]))
    return FrontEnd(params).db(waves), decoded.starts


def names(files) -> set[str]:
    return {k.rsplit("/", 1)[-1] for k in files}


def test_defaults_write_these_files_and_the_record_lists_exactly_them(species_model):
    record, files = explain(species_model, CLIP)
    assert names(files) == {
        "spectrogram.png",
        "overlay.jpg",
        "cam.npz",
        "selections.txt",
        "labels.txt",
        "embeddings.parquet",
    }
    listed = set(record["outputs"].values())
    assert listed == set(files)  # no inputs list, nothing not written
    assert set(record["image_sizes"]) == {"spectrogram", "overlay"}


def test_the_spectrogram_png_is_the_magma_image_pixel_for_pixel(species_model):
    """A palette PNG decodes to the very RGB image the model's input was resized from."""
    record, files = explain(species_model, CLIP)
    png = Image.open(io.BytesIO(files[record["outputs"]["spectrogram"]]))
    assert png.format == "PNG" and png.mode == "P"
    assert np.array_equal(
        np.frombuffer(png.palette.tobytes(), np.uint8).reshape(-1, 3), lut("magma")
    )
    # the same windows through the front end, stitched as the pipeline stitches them
    p = Params()
    db, starts = front_end(CLIP, p)
    rgb, _ = FrontEnd(p).images(db)
    columns = np.rint(starts / p.hop_length).astype(np.int64)
    expected = render.stitch(list(rgb.numpy()), columns)
    assert np.array_equal(np.asarray(png.convert("RGB")), expected)
    assert list(record["image_sizes"]["spectrogram"]) == list(expected.shape[:2])
    # and it is smaller than the RGB PNG of the same pixels
    rgb_png = render.encode_png(expected, compress_level=p.png_compress_level)
    assert len(files[record["outputs"]["spectrogram"]]) < 0.6 * len(rgb_png)


@pytest.mark.parametrize(("fmt", "ext", "pil"), [("jpeg", "jpg", "JPEG"), ("webp", "webp", "WEBP")])
def test_a_lossy_overlay_decodes_to_the_png_overlay_within_a_few_levels(
    species_model, fmt, ext, pil
):
    record, files = explain(species_model, CLIP, top_k=2, overlay_format=fmt)
    lossless, png_files = explain(species_model, CLIP, top_k=2, overlay_format="png")
    key = record["outputs"]["overlay"]
    assert key.endswith(f"/overlay.{ext}") and lossless["outputs"]["overlay"].endswith(".png")
    im = Image.open(io.BytesIO(files[key]))
    assert im.format == pil and im.size == tuple(record["image_sizes"]["overlay"][::-1])
    assert im.size[1] == 2 * 260  # a band per explained class
    ref = np.asarray(Image.open(io.BytesIO(png_files[lossless["outputs"]["overlay"]])), np.int16)
    diff = np.abs(np.asarray(im.convert("RGB"), np.int16) - ref)
    assert diff.mean() < 4, diff.mean()  # measured ~2.8 at quality 85 (PSNR ~36 dB)
    assert len(files[key]) < 0.25 * len(png_files[lossless["outputs"]["overlay"]])
    assert record["windows"] == lossless["windows"]  # the format changes the picture only


def test_an_image_too_wide_for_the_lossy_format_is_written_as_png():
    wide = np.zeros((8, render.LOSSY_LIMITS["webp"] + 1, 3), np.uint8)
    ext, data = render.encode_image(wide, fmt="webp", quality=85, compress_level=1)
    assert ext == "png" and Image.open(io.BytesIO(data)).size == (wide.shape[1], 8)
    ext, data = render.encode_image(wide, fmt="jpeg", quality=85, compress_level=1)
    assert ext == "jpg" and Image.open(io.BytesIO(data)).size == (wide.shape[1], 8)


@pytest.mark.parametrize("memfd", [True, False])
@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_images_are_pillows_own_bytes_through_an_in_memory_file(monkeypatch, fmt, memfd):
    """encode_image writes into a file with a descriptor (so Pillow's JPEG encoder releases the
    GIL): a memfd, or a temporary file where there is none; the bytes are those Pillow writes
    into a BytesIO."""
    table = colormaps.blend(colormaps.table("magma"), colormaps.table("plasma"), alpha=0.5)
    torch.manual_seed(0)
    levels = torch.randint(0, 256, (1, 260, 552), dtype=torch.int32)
    img = render.overlay(levels, torch.rand(1, 1, 260, 552), table=table)[0, 0].numpy()
    if not memfd:
        monkeypatch.delattr("os.memfd_create")
    ext, data = render.encode_image(img, fmt=fmt, quality=85, compress_level=1)
    buf = io.BytesIO()
    options = {"quality": 85, "method": 0} if fmt == "webp" else {"quality": 85}
    Image.fromarray(img).save(buf, fmt.upper(), **options)
    assert ext == render.EXTENSIONS[fmt] and data == buf.getvalue()


def test_cam_npz_holds_the_explained_names_and_no_db_by_default(species_model):
    record, files = explain(species_model, CLIP, top_k=2)
    with np.load(io.BytesIO(files[record["outputs"]["cam"]])) as npz:
        assert "spectrogram_db" not in npz.files
        ids, class_names = npz["class_ids"], npz["class_names"]
        assert ids.shape == class_names.shape == (record["n_windows"], 2)
        assert class_names.tolist() == [[SPECIES[i] for i in row] for row in ids.tolist()]
        assert npz["cams"].dtype == np.float32  # the CAM oracles' tolerances hold on them
        assert json.loads(str(npz["params"]))["outputs"] == list(DEFAULT_OUTPUTS)
    # a standalone file, a few kB: no 1000-name list, no dB
    assert len(files[record["outputs"]["cam"]]) < 10_000


def test_db_adds_the_float16_spectrogram_within_0_032_db_of_float32(species_model):
    record, files = explain(species_model, CLIP, outputs=("cam", "db"))
    assert names(files) == {"cam.npz"}
    assert set(record["outputs"]) == {"cam"} and record["image_sizes"] == {}
    with np.load(io.BytesIO(files[record["outputs"]["cam"]])) as npz:
        db = npz["spectrogram_db"]
    exact = front_end(CLIP, Params())[0].numpy()
    assert db.dtype == np.float16 and db.shape == exact.shape
    # float16 keeps 11 significant bits: steps of 1/16 dB from 64 to 80 dB below the maximum
    assert np.abs(db.astype(np.float32) - exact).max() <= 1 / 32


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        (("overlay",), {"overlay.webp"}),
        (("spectrogram", "detections"), {"spectrogram.png", "selections.txt", "labels.txt"}),
        (("embeddings",), {"embeddings.parquet"}),
        ((), set()),
    ],
)
def test_outputs_writes_exactly_what_it_names(species_model, outputs, expected):
    record, files = explain(species_model, CLIP, outputs=outputs, overlay_format="webp")
    assert names(files) == expected
    assert set(record["outputs"].values()) == set(files)
    assert set(record["image_sizes"]) == {"spectrogram", "overlay"} & set(outputs)
    assert record["n_windows"] == 2 and record["windows"][0]["explained"]  # the record is whole


def test_embeddings_hold_each_window_and_for_each_detection_its_windows_call(species_model):
    """A window's row, then one per explained class: the box embedding of the window's call,
    under the evidence box of its activity map (``echocam.explain.embed``), recomputed here from
    the model's features (the cells' agreement with the map drawn at the display's size:
    tests/unit/test_embed.py)."""
    p = Params(top_k=2)
    record, files = explain(species_model, CLIP, top_k=2)
    t = pq.read_table(pa.BufferReader(files[record["outputs"]["embeddings"]]))
    assert t.schema.equals(embeddings.schema(512))
    db, starts = front_end(CLIP, p)
    fe = FrontEnd(p)
    with torch.inference_mode():
        _, features = species_model.net.eval()(fe.model_input(fe.colours(db)[2]))
    activity = features.mean(dim=1).numpy()
    axes = Axes.for_params(p, frames=db.shape[-1])
    expected, want = [], []
    for j, w in enumerate(record["windows"]):
        expected.append((j, w["start_s"], None, None))
        want.append(features[j].mean(dim=(-2, -1)).numpy())
        start = starts[j] / p.sample_rate
        rows, cols = activity_cells(activity[j], threshold=p.box_threshold)
        relative = cells_box(rows, cols, shape=activity[j].shape, axes=axes, grid=CellGrid())
        box = (start + relative[0], start + relative[1], *relative[2:])
        call = box_embedding(features[j].numpy(), activity[j], relative, axes=axes, grid=CellGrid())
        for c in w["explained"]:
            expected.append((j, w["start_s"], c["class_name"], "activity", *box))
            want.append(call)
    got = [
        (r["window_index"], r["begin_s"], r["class_name"], r["box"])
        + (tuple(r[n] for n in embeddings.BOX_COLUMNS) if r["class_name"] else ())
        for r in t.drop_columns(["vector"]).to_pylist()
    ]
    assert [g[:4] for g in got] == [e[:4] for e in expected]
    np.testing.assert_allclose([g[4:] for g in got if g[2]], [e[4:] for e in expected if e[2]],
                               atol=1e-6)  # fmt: skip
    assert all(r == CLIP.name for r in t.column("source_key").to_pylist())
    v = embeddings.vectors(t).astype(np.float32)
    want = np.stack(want) / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(v, want, atol=2e-3)  # float16 vectors
    assert np.array_equal(v[1], v[2])  # a window's detections share its call's vector


def test_outputs_and_formats_are_checked():
    with pytest.raises(ValueError, match="unknown outputs"):
        Params(outputs=("spectrogram", "mp4"))
    with pytest.raises(ValueError, match="needs cam"):
        Params(outputs=("db",))
    with pytest.raises(ValueError, match="overlay_format"):
        Params(overlay_format="gif")
    with pytest.raises(ValueError, match="overlay_quality"):
        Params(overlay_quality=0)
    env = Params.from_env({"ECHOCAM_OUTPUTS": "cam,db", "ECHOCAM_OVERLAY_FORMAT": "png"})
    assert env.outputs == ("cam", "db") and env.overlay_format == "png"
    assert Params.from_dict(env.to_dict()) == env


@pytest.mark.slow
def test_default_outputs_weigh_less_than_the_recordings(species_model):
    """The outputs' size target: output bytes <= input bytes at the defaults (benchmarks/
    bench_outputs.py has the ratio per kind and format)."""
    inputs = outputs = 0
    for path in recordings():
        record, files = explain(species_model, path)
        inputs += path.stat().st_size
        outputs += sum(map(len, files.values())) + len(json.dumps(record))
    assert outputs <= 0.7 * inputs, outputs / inputs
