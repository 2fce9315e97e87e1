"""Embeddings: the box pooling, the stored format and the exact search against a brute force."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy import ndimage

from echocam.bucket import embeddings
from echocam.errors import InvalidParams
from echocam.explain.cam import CellGrid, display_maps
from echocam.explain.embed import activity_cells, box_embedding, cells_box, window_embeddings
from echocam.explain.localise import Axes, evidence
from echocam.search import Box, detection_id, parse_detection_id, scan
from echocam.settings import Params

P = Params()
FRAMES = 552


def axes() -> Axes:
    return Axes.for_params(P, frames=FRAMES)


@pytest.mark.parametrize(
    ("cells", "grid"),
    [
        ((7, 7), CellGrid()),
        ((9, 18), CellGrid(unresized=True)),
        ((14, 14), CellGrid(stride=16)),
        ((17, 35), CellGrid(stride=16, unresized=True)),
    ],
)
def test_cell_centres_are_where_the_display_map_of_one_hot_cell_peaks(cells, grid):
    h, w = cells
    rows, row_span = grid.centres(h, pixels=P.n_mels)
    cols, col_span = grid.centres(w, pixels=FRAMES)
    for y, x in [(1, 2), (h - 2, w // 2)]:
        cams = torch.zeros(1, 1, h, w)
        cams[0, 0, y, x] = 1.0
        m = display_maps(cams, size=(P.n_mels, FRAMES), grid=grid)[0, 0].numpy()
        peak_y, peak_x = np.unravel_index(m.argmax(), m.shape)
        assert abs(peak_y - rows[y]) <= 1 and abs(peak_x - cols[x]) <= 1
    # a resized image spans the display; an unresized one is the display, a cell per stride
    assert row_span * h == pytest.approx(grid.stride * h if grid.unresized else P.n_mels)
    assert col_span * w == pytest.approx(grid.stride * w if grid.unresized else FRAMES)


def features_by_cell(h: int, w: int) -> np.ndarray:
    """(h * w, h, w): cell (y, x) is the one-hot vector of index y * w + x."""
    return np.eye(h * w, dtype=np.float32).reshape(h * w, h, w)


def test_a_box_pools_the_cells_it_overlaps_weighted_by_the_cam():
    h, w = 7, 7
    f = features_by_cell(h, w)
    cam = np.zeros((h, w), np.float32)
    cam[3, 2], cam[3, 3] = 1.0, 3.0
    cam[0, 0] = 9.0  # outside the box: no weight
    a = axes()
    rows, _ = CellGrid().centres(h, pixels=P.n_mels)
    cols, _ = CellGrid().centres(w, pixels=FRAMES)
    # a box over cells (3, 2) and (3, 3) only: its rows' frequencies, its columns' times
    row = int(round(rows[3]))
    low, high = a.low_hz[row], a.high_hz[row]
    begin, end = cols[2] * a.frame_s, cols[3] * a.frame_s
    v = box_embedding(f, cam, (begin, end, low, high), axes=a, grid=CellGrid())
    want = np.zeros(h * w)
    want[3 * w + 2], want[3 * w + 3] = 0.25, 0.75
    np.testing.assert_allclose(v, want, atol=1e-6)
    # where the CAM is zero on every cell of the box, the cells count equally
    v = box_embedding(f, np.zeros_like(cam), (begin, end, low, high), axes=a, grid=CellGrid())
    assert v[3 * w + 2] == pytest.approx(0.5) and v[3 * w + 3] == pytest.approx(0.5)
    # the whole window's box pools every cell: the window embedding, up to the weights
    whole = (0.0, FRAMES * a.frame_s, 0.0, a.top_hz)
    v = box_embedding(f, np.ones_like(cam), whole, axes=a, grid=CellGrid())
    np.testing.assert_allclose(v, window_embeddings(torch.from_numpy(f)[None])[0], atol=1e-6)


def test_a_box_narrower_than_a_cell_takes_the_cell_it_lies_in():
    h, w = 9, 18
    f = features_by_cell(h, w)
    a = axes()
    rows, _ = CellGrid(unresized=True).centres(h, pixels=P.n_mels)
    cols, _ = CellGrid(unresized=True).centres(w, pixels=FRAMES)
    row = int(round(rows[4]))
    t = (cols[5] + 3) * a.frame_s  # a 20-ms box a few frames right of cell 5's centre
    box = (t, t + 0.02, a.low_hz[row], a.high_hz[row])
    v = box_embedding(f, np.ones((h, w), np.float32), box, axes=a, grid=CellGrid(unresized=True))
    assert np.flatnonzero(v).tolist() == [4 * w + 5]


def pooled(box, *, h: int, w: int, grid: CellGrid) -> set[tuple[int, int]]:
    """The cells ``box_embedding`` pools for ``box``, as (row, column)."""
    v = box_embedding(features_by_cell(h, w), np.ones((h, w), np.float32), box, axes=axes(),
                      grid=grid)  # fmt: skip
    return {divmod(int(i), w) for i in np.flatnonzero(v)}


@pytest.mark.parametrize(
    ("cells", "grid"), [((7, 7), CellGrid()), ((9, 18), CellGrid(unresized=True))]
)
def test_the_activity_cells_are_those_the_drawn_maps_evidence_box_pools(cells, grid):
    """A window's call is boxed on the CAM's grid, not on the map drawn at the display's size:
    the cells must be those the drawn map's evidence box would pool (9 maps in 10 at least;
    bilinear drawing is not exactly two 1-d interpolations' rule), and the box stored for them
    must pool them again, and no others."""
    h, w = cells
    rng = np.random.default_rng(0)
    same = 0
    for _ in range(100):
        a = ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.0).astype(np.float32)
        drawn = display_maps(torch.from_numpy(a)[None, None], size=(P.n_mels, FRAMES), grid=grid)
        e = evidence(drawn[0, 0].numpy(), axes=axes(), threshold=P.box_threshold)
        box = (e.box_begin_s, e.box_end_s, e.box_low_hz, e.box_high_hz)
        rows, cols = activity_cells(a, threshold=P.box_threshold)
        block = {(y, x) for y in range(rows.start, rows.stop) for x in range(cols.start, cols.stop)}
        stored = cells_box(rows, cols, shape=(h, w), axes=axes(), grid=grid)
        assert pooled(stored, h=h, w=w, grid=grid) == block
        same += pooled(box, h=h, w=w, grid=grid) == block
    assert same >= 85  # 90 and 98 measured


def test_the_activity_cells_of_a_peak_and_of_a_constant_map():
    a = np.zeros((7, 7), np.float32)
    a[3, 4] = 1.0  # drawn, the region reaches 0.4 of the way to each neighbour
    assert activity_cells(a, threshold=0.6) == (slice(3, 4), slice(4, 5))
    a[3, 5] = 0.3  # the mean of the two is 0.65: now more than half way to that one
    assert activity_cells(a, threshold=0.6) == (slice(3, 4), slice(4, 6))
    a[0, 0] = 0.9  # above the threshold but not connected to the peak
    assert activity_cells(a, threshold=0.6) == (slice(3, 4), slice(4, 6))
    assert activity_cells(np.ones((7, 7), np.float32), threshold=0.5) == (slice(0, 1), slice(0, 1))


def table(n: int, dim: int, *, seed: int, windows_every: int = 3) -> tuple[pa.Table, np.ndarray]:
    """``n`` rows, a window's (its own key, window 0) every ``windows_every``, then its
    detections, which share a vector as a run's do."""
    rng = np.random.default_rng(seed)
    v = np.abs(rng.standard_normal((n, dim))).astype(np.float32)
    is_window = np.arange(n) % windows_every == 0
    first_box = np.arange(n) - np.arange(n) % windows_every + 1
    v[~is_window] = v[first_box[~is_window]]
    classes = np.where(is_window, None, np.where(np.arange(n) % 2, "a", "b"))
    columns = {
        "source_key": [f"site/{i // windows_every:04d}.wav" for i in range(n)],
        "window_index": [0] * n,
        "begin_s": [0.0] * n,
        "end_s": [5.0] * n,
        "class_name": classes.tolist(),
        "class_id": [None if c is None else int(c == "a") for c in classes],
        "probability": [None if c is None else 0.5 for c in classes],
        "box": [None if c is None else "call" for c in classes],
        **{name: [None if c is None else 1.0 for c in classes] for name in embeddings.BOX_COLUMNS},
    }
    return embeddings.table(columns, v), v


def test_stored_vectors_are_unit_float16_and_keep_cosines_within_2e4():
    t, v = table(500, 512, seed=0)
    back = pq.read_table(pa.BufferReader(embeddings.to_parquet(t)))
    assert back.schema.equals(embeddings.schema(512)) and embeddings.dim_of(back.schema) == 512
    stored = embeddings.vectors(back).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=2e-3)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    cos_stored, cos_exact = stored @ stored[0], unit @ unit[0]
    assert np.abs(cos_stored - cos_exact).max() < 2e-4
    # a slice of a batch reads its own rows
    assert np.array_equal(embeddings.vectors(back.slice(7, 3)), embeddings.vectors(back)[7:10])


def test_a_recordings_lean_file_reads_back_the_same_table():
    """A recording's own file (``lean``): the same table as the shards' options give, written
    uncompressed and without statistics."""
    t, _ = table(40, 512, seed=1)
    lean = pq.ParquetFile(pa.BufferReader(embeddings.to_parquet(t, lean=True)))
    assert lean.read().equals(pq.read_table(pa.BufferReader(embeddings.to_parquet(t))))
    columns = [lean.metadata.row_group(0).column(i) for i in range(lean.metadata.num_columns)]
    assert {c.compression for c in columns} == {"UNCOMPRESSED"}
    assert not any(c.is_stats_set for c in columns)


@pytest.mark.parametrize("windows", [False, True])
@pytest.mark.parametrize("rows_a_batch, top", [(257, 15), (None, 15), (257, 1000)])
def test_scan_finds_what_a_numpy_brute_force_finds(windows, rows_a_batch, top):
    """One row a window: its own, or its first detection's (which its others share), also
    where a batch of 257 rows splits a window's rows and where every window is asked for."""
    t, v = table(3000, 64, seed=1)
    query = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    batches = pq.read_table(pa.BufferReader(embeddings.to_parquet(t))).to_batches(
        max_chunksize=rows_a_batch
    )
    got = scan(batches, query, top=top, windows=windows)
    rows = np.arange(0, len(v), 3) + (0 if windows else 1)
    stored = embeddings.vectors(t).astype(np.float64)  # the same vectors, as stored
    cos = stored[rows] @ (query / np.linalg.norm(query))
    best = rows[np.argsort(-cos, kind="stable")[:top]]
    want = [(t.column("source_key")[int(i)].as_py(), t.column("class_name")[int(i)].as_py())
            for i in best]  # fmt: skip
    keys, names = (got.column(n).to_pylist() for n in ("source_key", "class_name"))
    assert list(zip(keys, names, strict=True)) == want
    np.testing.assert_allclose(
        got.column("similarity").to_numpy(), np.sort(cos)[::-1][:top], atol=1e-6
    )


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_a_rows_similarity_does_not_depend_on_the_rows_scanned_beside_it(device):
    """The local search scans whole row groups, a distributed part a few: each row's exact
    similarity must be the same number either way (and on the device as on the CPU)."""
    t, _ = table(8000, 512, seed=5, windows_every=2)  # 4,000 windows, a detection each
    query = np.random.default_rng(6).standard_normal(512).astype(np.float32)
    whole = scan(t.to_batches(), query, top=4000, device=device)
    apart = scan(t.to_batches(max_chunksize=7), query, top=4000, device=device)
    sims = whole.column("similarity").to_numpy()
    assert whole.num_rows == 4000 and np.array_equal(sims, apart.column("similarity").to_numpy())
    if device != "cpu":
        on_cpu = scan(t.to_batches(), query, top=4000).column("similarity").to_numpy()
        np.testing.assert_allclose(sims, on_cpu, atol=1e-6)


def test_scan_filters_by_class_similarity_and_excluded_rows():
    t, v = table(600, 32, seed=3)
    query = embeddings.vectors(t.slice(1, 1))[0].astype(np.float32)  # row 1: a detection of "a"
    key = t.column("source_key")[1].as_py()
    got = scan(t.to_batches(max_chunksize=100), query, top=5, class_name="a")
    assert set(got.column("class_name").to_pylist()) == {"a"}
    assert got.column("source_key")[0].as_py() == key  # itself, first
    assert got.column("similarity")[0].as_py() == pytest.approx(1.0, abs=2e-3)
    got = scan(t.to_batches(), query, top=5, class_name="a", exclude=[(key, 0)])
    assert key not in got.column("source_key").to_pylist() and got.num_rows == 5
    got = scan(t.to_batches(), query, top=50, min_similarity=0.8)
    assert got.num_rows < 50 and min(got.column("similarity").to_pylist()) >= 0.8
    assert scan(t.to_batches(), query, top=5, class_name="nobody").num_rows == 0


def test_box_and_detection_ids_parse_and_bad_ones_say_why():
    assert Box.parse("site/a.wav@1.5-2.25") == Box("site/a.wav", 1.5, 2.25)
    assert Box.parse("a@b.wav@1-2@500-8000") == Box("a@b.wav", 1.0, 2.0, 500.0, 8000.0)
    for bad in ("site/a.wav", "site/a.wav@2-1", "@1-2", "a.wav@1-2@9-3"):
        with pytest.raises(InvalidParams, match="--like"):
            Box.parse(bad)
    text = detection_id("x#y@z.wav", 14.54195, "Ninox boobook")
    assert parse_detection_id(text) == ("x#y@z.wav", 14.54195, "Ninox boobook")
    with pytest.raises(InvalidParams, match="KEY@WINDOW_START#CLASS"):
        parse_detection_id("no-id-here")
