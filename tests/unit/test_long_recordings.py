"""Long recordings: blocks of windows through compute and encode, tiles, cam.npz in parts."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from echocam.explain import encoder, render
from echocam.explain.encoder import read
from echocam.explain.npz import NpzWriter
from echocam.explain.pipeline import Explainer, Source
from echocam.settings import Params
from tests.helpers import recordings, wav_bytes

SECONDS = 150  # 30 windows of 5 s: eight forward batches of 4


@pytest.fixture(scope="module")
def long_wav() -> bytes:
    """A real recording (44.1 kHz where there is one) repeated to 150 s, plus a partial window."""
    path = next((p for p in recordings() if "44k" in p.name), recordings()[0])
    x, sr = sf.read(path, dtype="float32")
    x = x.mean(axis=1) if x.ndim > 1 else x
    n = int((SECONDS + 2.5) * sr)  # the last window is end-aligned: it overlaps its predecessor
    return wav_bytes(np.tile(x, -(-n // x.shape[0]))[:n], sr)


#: every output, the overlay lossless: tiles of a JPEG are not cuts of the whole JPEG
EVERYTHING = Params(
    outputs=("spectrogram", "overlay", "cam", "db", "detections"), overlay_format="png"
)


def explain(model, data: bytes, *, block_batches: int, params: Params = EVERYTHING):
    ex = Explainer(model, params, device="cpu", batch_size=4, block_batches=block_batches)
    (result,) = ex.explain([Source("long.wav", data, len(data))])
    assert result.record["status"] == "ok", result.record
    return result


def files(result: encoder.Result) -> dict[str, bytes]:
    return {key: read(blob) for key, blob in result.files.items()}


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "timings_s"}


@pytest.mark.slow
def test_outputs_are_byte_equal_whatever_the_blocks(species_model, long_wav, monkeypatch):
    """One batch per block, three, and the whole recording in one block (what the pipeline
    did before blocks): the same files, byte for byte, and the same record.  Tiles of 4096
    columns put tile boundaries inside windows and inside blocks."""
    monkeypatch.setattr(encoder, "TILE_COLUMNS", 4096)
    runs = {n: explain(species_model, long_wav, block_batches=n) for n in (1, 3, 100)}
    got = {n: files(r) for n, r in runs.items()}
    assert got[1].keys() == got[3].keys() == got[100].keys()
    for key in got[100]:
        assert got[1][key] == got[100][key] == got[3][key], key
    records = {n: comparable(r.record) for n, r in runs.items()}
    assert records[1] == records[3] == records[100]
    rec = records[1]
    assert rec["n_windows"] == 31 and rec["tile_columns"] == 4096
    width = rec["image_sizes"]["overlay"][1]
    assert len(rec["outputs"]["overlay_tiles"]) == -(-width // 4096) >= 5
    assert rec["outputs"]["overlay"] == rec["outputs"]["overlay_tiles"][0]


@pytest.mark.slow
def test_tiles_are_the_whole_image_cut_and_the_npz_holds_every_window(
    species_model, long_wav, monkeypatch
):
    """Tiles side by side are the single image that a wide enough threshold writes, which is
    ``render.stitch`` of the windows; cam.npz reads back with np.load, every window's dB."""
    monkeypatch.setattr(encoder, "TILE_COLUMNS", 10**6)
    whole = explain(species_model, long_wav, block_batches=2)
    monkeypatch.setattr(encoder, "TILE_COLUMNS", 4096)
    tiled = explain(species_model, long_wav, block_batches=2)
    w, t = files(whole), files(tiled)
    for name in ("spectrogram", "overlay"):
        single = np.asarray(Image.open(io.BytesIO(w[whole.record["outputs"][name]])))
        keys = tiled.record["outputs"][f"{name}_tiles"]
        tiles = [np.asarray(Image.open(io.BytesIO(t[k]))) for k in keys]
        assert {a.shape[1] for a in tiles[:-1]} == {4096} and 0 < tiles[-1].shape[1] <= 4096
        np.testing.assert_array_equal(np.concatenate(tiles, axis=1), single)
        assert list(single.shape[:2]) == tiled.record["image_sizes"][name]
    assert "spectrogram_tiles" not in whole.record["outputs"] and "tile_columns" not in whole.record
    npz_w = np.load(io.BytesIO(w[whole.record["outputs"]["cam"]]))
    npz_t = np.load(io.BytesIO(t[tiled.record["outputs"]["cam"]]))
    assert npz_w.files == npz_t.files and npz_w.files[0] == "spectrogram_db"
    db = npz_t["spectrogram_db"]
    assert db.shape == (31, 260, 552) and db.dtype == np.float16
    for name in npz_w.files:
        np.testing.assert_array_equal(npz_w[name], npz_t[name])
    # each window's dB is that window's spectrogram: its maximum is 0 dB (ref=max)
    np.testing.assert_array_equal(db.max(axis=(1, 2)), np.zeros(31, np.float16))
    names, ids = npz_t["class_names"], npz_t["class_ids"]
    assert names.tolist() == [[species_model.class_names[i] for i in row] for row in ids.tolist()]
    assert json.loads(str(npz_t["params"]))["n_mels"] == 260


def test_tiles_follow_stitch_for_any_hop_and_tile_width():
    """render.Tiles against render.stitch: overlapping windows (later ones win), an
    end-aligned last window, tiles narrower than a window, a hop longer than the window."""
    rng = np.random.default_rng(0)
    for width, hop, tile in ((7, 5, 4), (7, 7, 16), (7, 3, 5), (4, 9, 6)):
        starts = np.arange(0, 60 - width + 1, hop)
        starts = np.append(starts, 60 - width) if starts[-1] + width < 60 else starts
        wins = [rng.integers(0, 255, (2, 3, width, 3), dtype=np.uint8) for _ in starts]
        ref = np.zeros((2, 3, 60, 3), np.uint8)  # stitch leaves gaps unwritten: start from 0
        for win, s in zip(wins, starts, strict=True):
            ref[..., s : s + width, :] = win
        if hop <= width:
            np.testing.assert_array_equal(ref, render.stitch(wins, starts))
        tiles = render.Tiles(width=60, tile=tile)
        got = []
        for win, s in zip(wins, starts, strict=True):
            got += tiles.add(win, int(s))
            assert len(tiles.open) <= -(-width // tile) + 1  # only the tiles near the window
        got += tiles.close()
        assert [i for i, _ in got] == list(range(-(-60 // tile)))
        np.testing.assert_array_equal(np.concatenate([a for _, a in got], axis=-2), ref)


def test_npz_members_in_parts_read_back_and_a_wrong_row_count_fails():
    buf = io.BytesIO()
    npz = NpzWriter(buf)
    big = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4)
    npz.begin("big", shape=big.shape, dtype=big.dtype)
    npz.write(big[:2])
    npz.write(big[2])
    npz.write(big[3:])
    npz.end()
    npz.add("names", np.array(["a", "bc"]))
    npz.add("text", np.array('{"x": 1}'))
    npz.close()
    with np.load(io.BytesIO(buf.getvalue())) as z:
        assert z.files == ["big", "names", "text"]
        np.testing.assert_array_equal(z["big"], big)
        assert z["names"].tolist() == ["a", "bc"] and str(z["text"]) == '{"x": 1}'
    again = io.BytesIO()
    same = NpzWriter(again)
    same.add("big", big)
    same.add("names", np.array(["a", "bc"]))
    same.add("text", np.array('{"x": 1}'))
    same.close()
    assert again.getvalue() == buf.getvalue()  # in parts or whole, at any time: the same bytes
    short = NpzWriter(io.BytesIO())
    short.begin("big", shape=big.shape, dtype=big.dtype)
    short.write(big[:4])
    with pytest.raises(ValueError, match="short"):
        short.end()
    with pytest.raises(ValueError, match="more rows"):
        short.write(big[:2])


@pytest.mark.slow
def test_large_outputs_wait_in_temporary_files_and_the_store_writes_them(
    species_model, long_wav, tmp_path, monkeypatch
):
    from echocam.bucket.storage import LocalStore

    monkeypatch.setattr(encoder, "SPOOL_BYTES", 64 << 10)
    result = explain(species_model, long_wav, block_batches=1)
    spooled = {k for k, blob in result.files.items() if not isinstance(blob, bytes)}
    assert result.record["outputs"]["cam"] in spooled
    assert result.record["outputs"]["overlay"] in spooled
    store = LocalStore(tmp_path)
    for key, blob in result.files.items():
        store.put(key, blob)
        assert (tmp_path / key).read_bytes() == read(blob)
    result.close()
    assert all(blob.closed for k, blob in result.files.items() if k in spooled)


@pytest.mark.slow
def test_the_viewer_serves_a_tiled_recording_as_it_serves_one_image(
    species_checkpoint, long_wav, tmp_path
):
    """A 152-s recording's images are two tiles; /tile (by record and image), /crop and the
    gallery's thumbnail cut them as they would cut the whole image."""
    import re
    import urllib.parse
    import urllib.request

    from echocam.run.local import run_local
    from echocam.settings import Settings
    from echocam.view.images import TILE, Images, Tiled, image_ref, zoom_levels
    from echocam.view.report import detection_crop
    from echocam.view.server import make_server, start_in_thread

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "long.wav").write_bytes(long_wav)
    out = tmp_path / "out"
    settings = Settings(weights=str(species_checkpoint), threads=2)
    run_local(str(tmp_path / "in"), str(out), params=Params(), settings=settings, progress=False)
    record = json.loads((out / "long.wav" / "record.json").read_text())
    ref = image_ref(record, "overlay")
    assert isinstance(ref, Tiled) and len(ref.keys) == 2 and ref.columns == encoder.TILE_COLUMNS
    whole = np.concatenate(
        [np.asarray(Image.open(out / k).convert("RGB")) for k in ref.keys], axis=1
    )
    assert whole.shape[:2] == (ref.height, ref.width)
    single = io.BytesIO()
    Image.fromarray(whole).save(single, "PNG")
    one = Images(lambda key: single.getvalue())  # the same picture as one PNG
    srv = make_server(str(out), port=0, quiet=True)
    start_in_thread(srv)
    base = f"http://127.0.0.1:{srv.server_address[1]}"

    def get(target: str) -> bytes:
        with urllib.request.urlopen(base + target, timeout=60) as resp:
            return resp.read()

    def pixels(png: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    try:
        page = get("/rec?" + urllib.parse.urlencode({"key": "long.wav"})).decode()
        view = json.loads(re.search(r'id="rec-data">(.*?)</script>', page).group(1))
        queries = [im["query"] for im in view["images"]]
        assert queries == [{"rec": "long.wav", "image": n} for n in ("spectrogram", "overlay")]
        for z in range(zoom_levels(ref.width) + 1):
            for i in range(-(-ref.width // (TILE << z))):
                q = urllib.parse.urlencode({**queries[1], "z": z, "i": i})
                np.testing.assert_array_equal(
                    pixels(get(f"/tile?{q}")), pixels(one.tile("x.png", z, i))
                )
        # a window across the tile boundary: its detection crop spans both tiles
        w = next(w for w in record["windows"] if w["start_s"] * 110.25 > 16000)
        t, cid = w["start_s"], w["explained"][0]["class_id"]
        crop = get("/crop?" + urllib.parse.urlencode({"key": "long.wav", "t": t, "class_id": cid}))
        as_one = {**record, "outputs": {"overlay": "x.png"}}  # the same record, one PNG
        params = json.loads((out / "run.json").read_text())["params"]
        np.testing.assert_array_equal(
            pixels(crop), pixels(detection_crop(one, as_one, params, t, cid))
        )
        thumb = get("/thumb?" + urllib.parse.urlencode({"key": record["outputs"]["overlay"]}))
        np.testing.assert_array_equal(pixels(thumb), pixels(one.thumbnail("x.png", columns=3308)))
        bad = urllib.parse.urlencode({"rec": "long.wav", "image": "cam", "z": 0, "i": 0})
        with pytest.raises(urllib.error.HTTPError):
            get(f"/tile?{bad}")
    finally:
        srv.shutdown()
