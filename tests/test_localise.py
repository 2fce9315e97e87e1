"""Peak and evidence box of a display map, in seconds and Hz, on hand-made maps."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from scipy import ndimage

from echocam.localise import Axes, band_centres, evidence, peaks_and_masks, region_evidence
from echocam.settings import Params

P = Params()
FRAMES = 1 + P.window_samples // P.hop_length  # 552 at the defaults
AXES = Axes.of(
    frames=FRAMES,
    sample_rate=P.sample_rate,
    hop_length=P.hop_length,
    n_mels=P.n_mels,
    fmin=P.fmin,
    fmax=P.fmax,
)


def test_band_centres_are_the_filterbanks_peaks():
    fb = librosa.filters.mel(sr=P.sample_rate, n_fft=P.n_fft, n_mels=40, fmin=0, fmax=8000)
    bins = librosa.fft_frequencies(sr=P.sample_rate, n_fft=P.n_fft)
    peaks = bins[fb.argmax(axis=1)]  # each triangle is highest at a bin beside its centre
    centres = band_centres(n_mels=40, fmin=0, fmax=8000)
    np.testing.assert_allclose(centres, peaks, atol=bins[1])
    assert np.all(np.diff(centres) > 0)


def test_axes_put_low_frequencies_at_the_bottom_and_frames_at_their_centres():
    assert AXES.freqs_hz[0] > AXES.freqs_hz[-1]  # row 0 is the highest band
    assert AXES.times_s[0] == 0 and AXES.times_s[100] == pytest.approx(100 * 200 / 22050)


def test_peak_and_box_of_a_rectangle_with_a_hot_spot():
    m = np.zeros((P.n_mels, FRAMES), np.float32)
    m[100:150, 200:300] = 0.6  # the region above threshold
    m[120, 250] = 1.0  # its peak
    m[10:20, 10:20] = 0.9  # another region, not connected: not in the box
    ev = evidence(m, axes=AXES, offset_s=5.0, threshold=0.5)
    assert ev.peak_time_s == pytest.approx(5.0 + 250 * 200 / 22050)
    assert ev.peak_freq_hz == pytest.approx(AXES.freqs_hz[120])
    assert ev.box_begin_s == pytest.approx(5.0 + 200 * 200 / 22050)
    assert ev.box_end_s == pytest.approx(5.0 + 299 * 200 / 22050)
    assert ev.box_high_hz == pytest.approx(AXES.freqs_hz[100])
    assert ev.box_low_hz == pytest.approx(AXES.freqs_hz[149])
    assert ev.box_low_hz < ev.peak_freq_hz < ev.box_high_hz


def test_threshold_shrinks_the_box_to_the_core():
    rows, cols = np.mgrid[0 : P.n_mels, 0:FRAMES]
    m = np.exp(-(((rows - 80) / 20.0) ** 2) - ((cols - 300) / 50.0) ** 2)  # a Gaussian blob
    wide = evidence(m, axes=AXES, threshold=0.2)
    narrow = evidence(m, axes=AXES, threshold=0.8)
    assert wide.box_begin_s < narrow.box_begin_s < narrow.box_end_s < wide.box_end_s
    assert wide.box_low_hz < narrow.box_low_hz < narrow.box_high_hz < wide.box_high_hz
    # the half-maximum box of a Gaussian: +-sigma*sqrt(ln 2) around the centre, in cells
    half = evidence(m, axes=AXES, threshold=0.5)
    assert (half.box_end_s - half.box_begin_s) / (200 / 22050) == pytest.approx(
        2 * 50 * np.sqrt(np.log(2)), abs=2
    )


def test_a_constant_map_boxes_the_whole_window():
    ev = evidence(np.zeros((P.n_mels, FRAMES)), axes=AXES, threshold=0.5)
    assert ev.box_begin_s == 0 and ev.box_end_s == pytest.approx(AXES.times_s[-1])
    assert ev.box_low_hz == AXES.freqs_hz[-1] and ev.box_high_hz == AXES.freqs_hz[0]


def test_the_batched_half_and_the_host_half_give_the_evidence_of_each_map():
    """``peaks_and_masks`` on a batch of maps (the device stage) then ``region_evidence`` per map
    (the finish stage) is ``evidence`` map by map; the label runs on the mask's bounding rows
    and columns only, which must not move the box."""
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[0 : P.n_mels, 0:FRAMES]
    maps = []
    for _ in range(6):
        r, c = rng.uniform(0, P.n_mels), rng.uniform(0, FRAMES)
        m = np.exp(-(((rows - r) / 30.0) ** 2) - ((cols - c) / 80.0) ** 2)
        m[rng.integers(0, P.n_mels), rng.integers(0, FRAMES)] = 0.95  # a far, lone hot cell
        maps.append(m / m.max())
    maps.append(np.zeros((P.n_mels, FRAMES)))  # constant: the whole window
    batch = torch.from_numpy(np.stack(maps).astype(np.float32)).view(7, 1, P.n_mels, FRAMES)
    peaks, masks = peaks_and_masks(batch, threshold=0.5)
    assert peaks.shape == (7, 1) and masks.shape == batch.shape and masks.dtype == torch.bool
    for m, peak, mask in zip(batch[:, 0].numpy(), peaks[:, 0], masks[:, 0].numpy(), strict=True):
        got = region_evidence(mask, int(peak), axes=AXES, offset_s=2.0)
        assert got == evidence(m, axes=AXES, offset_s=2.0, threshold=0.5)
        # and what a label of the whole map gives
        row, col = np.unravel_index(int(np.argmax(m)), m.shape)
        labels, _ = ndimage.label(m >= min(0.5, m[row, col]))
        box_rows, box_cols = ndimage.find_objects(labels)[labels[row, col] - 1]
        assert got.box_begin_s == pytest.approx(2.0 + AXES.times_s[box_cols.start])
        assert got.box_end_s == pytest.approx(2.0 + AXES.times_s[box_cols.stop - 1])
        assert got.box_high_hz == AXES.freqs_hz[box_rows.start]
        assert got.box_low_hz == AXES.freqs_hz[box_rows.stop - 1]
