"""The outside-box loss (``--outside-box-loss``): CAM cells away from every labelled box are
trained as no species; the windows carry their boxes in their own seconds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch

BOX = (2.0, 2.3, 3000.0, 4000.0)  # s from the window's start, Hz


def _grid():
    from echocam.settings import Params

    params = Params(input_size=0)  # the training default: the unresized spectrogram
    frames = 1 + params.window_samples // params.hop_length
    return params, frames, (params.n_mels // 32 + 1, frames // 32 + 1)


def test_cells_within_a_cell_of_a_box_are_not_outside():
    from echocam.explain.cam import CellGrid
    from echocam.explain.localise import Axes
    from echocam.train.outside import outside_cells

    params, frames, cells = _grid()
    out = outside_cells([BOX], params=params, cells=cells, frames=frames)
    assert out.shape == cells
    # the cell nearest the box's centre is in, as are only its neighbours (a 3 x 3 block at most)
    cols, _ = CellGrid.of(params).centres(cells[1], pixels=frames)
    rows, _ = CellGrid.of(params).centres(cells[0], pixels=params.n_mels)
    axes = Axes.for_params(params, frames=frames)
    col = int(np.argmin(np.abs(np.interp(cols, np.arange(frames), axes.times_s) - 2.15)))
    freqs = np.interp(rows, np.arange(params.n_mels), axes.freqs_hz)
    row = int(np.argmin(np.abs(freqs - 3500)))
    assert not out[row, col]
    inside = np.argwhere(~out)
    assert 1 <= len(inside) <= 9
    assert np.abs(inside - [row, col]).max() <= 1
    # far from the box: the window's first second, and its lowest band
    assert out[:, 0].all() and out[-1].all()
    assert out.all() == False  # noqa: E712 (numpy bool)
    assert outside_cells([], params=params, cells=cells, frames=frames).all()
    whole = (0.0, params.window_seconds, params.fmin, params.fmax)
    assert not outside_cells([whole], params=params, cells=cells, frames=frames).any()


def test_the_loss_is_how_far_a_species_outscores_no_species_outside_the_boxes():
    """With a background class: the mean over the outside cells of the highest species logit
    above the background's (the fc layer on each cell's features), 0 where it is below; without
    one: the own class's above the highest other.  Windows without boxes take no part."""
    from echocam.train.outside import OutsideBoxes, outside_cells

    params, frames, cells = _grid()
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 512, *cells, generator=g)
    fc = torch.nn.Linear(512, 4)
    boxes = [[BOX], None, []]  # a call; a window without boxes; a --background window
    batch = OutsideBoxes(boxes, [1, 2, 3], [frames] * 3, params, background=3)
    masks = [outside_cells(b, params=params, cells=cells, frames=frames) for b in (boxes[0], [])]
    per_cell = fc(features.permute(0, 2, 3, 1))  # (b, h, w, classes)
    chosen = torch.cat([per_cell[0][torch.from_numpy(masks[0])], per_cell[2].flatten(0, 1)])
    want = (chosen[:, :3].max(1).values - chosen[:, 3]).clamp(min=0).mean()
    assert want > 0 and batch.loss(features, fc).item() == pytest.approx(want.item(), rel=1e-5)

    no_class = OutsideBoxes(boxes[:1], [1], [frames], params, background=None)
    own = per_cell[0][torch.from_numpy(masks[0])]
    want = (own[:, 1] - own[:, [0, 2, 3]].max(1).values).clamp(min=0).mean()
    assert no_class.loss(features[:1], fc).item() == pytest.approx(want.item(), rel=1e-5)
    assert OutsideBoxes([None], [1], [frames], params, 3).loss(features[:1], fc).item() == 0.0
    # a background logit above every species' in every cell: nothing to learn
    with torch.no_grad():
        fc.bias[3] = 1e4
    assert batch.loss(features, fc).item() == 0.0


def test_a_window_carries_the_boxes_of_its_recording_in_its_own_seconds(tmp_path):
    """Every labelled box of the recording that overlaps the window, whatever its class, moved
    to the window's start; a --background window has none; a recording labelled whole, None."""
    from echocam.bucket.storage import LocalStore
    from echocam.settings import Params
    from echocam.train.config import Augment
    from echocam.train.dataset import Backgrounds, Loader
    from echocam.train.labels import Example

    params = Params()
    sr = params.sample_rate
    noise = np.random.default_rng(0).normal(0, 0.01, 20 * sr)
    for name in ("long.wav", "whole.wav"):
        sf.write(tmp_path / name, noise, sr)
    examples = [
        Example("long.wav", 0, 10.0, 10.5, 3000.0, 4000.0),
        Example("long.wav", 1, 11.0, 11.2, 500.0, 800.0),  # another class, in the same window
        Example("long.wav", 0, 1.0, 1.2, 3000.0, 4000.0),  # far away: not in it
        Example("whole.wav", 1),
        Example("whole.wav", 2, background=True),
    ]
    with ThreadPoolExecutor(1) as pool:
        loader = Loader(
            LocalStore(tmp_path), examples, params=params, augment=Augment.off(), pool=pool,
            batch_size=1,
            backgrounds=Backgrounds(LocalStore(tmp_path), params=params, extensions=(".wav",)),
        )  # fmt: skip
        got = [loader.window(i, rng=None) for i in (0, 3, 4)]
    start = 10.25 - params.window_seconds / 2  # centred on the span
    want = [(10.0 - start, 10.5 - start, 3000.0, 4000.0), (11.0 - start, 11.2 - start, 500, 800)]
    np.testing.assert_allclose(got[0].boxes, want, atol=1e-3)
    assert got[1].boxes is None and got[2].boxes == ()
