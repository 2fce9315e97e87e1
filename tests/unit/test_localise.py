"""Peak and evidence box of a display map, in seconds and Hz, on hand-made maps."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from scipy import ndimage

from echocam.explain.localise import (
    FLOOR_STRIDE,
    Axes,
    _components,
    _dilate,
    band_centres,
    band_floor,
    call_box,
    evidence,
    peaks_and_masks,
    region_evidence,
)
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
    # up to the Nyquist frequency: the bands above it (fmax 13 kHz at 22,050 Hz) are empty
    assert ev.box_low_hz == AXES.freqs_hz[-1] and ev.box_high_hz == P.sample_rate / 2
    assert AXES.freqs_hz[0] > AXES.top_hz == P.sample_rate / 2


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
        assert got.box_high_hz == min(AXES.freqs_hz[box_rows.start], AXES.top_hz)
        assert got.box_low_hz == min(AXES.freqs_hz[box_rows.stop - 1], AXES.top_hz)


# -- the call box: the spectrogram's loud pixels inside the evidence region ------------------

FRAME_S = P.hop_length / P.sample_rate


def _background(seed: int = 0) -> np.ndarray:
    """A noisy spectrogram in dB (n_mels, frames), row 0 the lowest band as the front end's:
    2 dB of spread, never 10 dB above a band's median (5 standard deviations)."""
    return -60 + 2 * np.random.default_rng(seed).standard_normal((P.n_mels, FRAMES))


def test_the_call_box_bounds_the_loud_pixels_not_the_cam_region():
    db = _background()
    db[20:25, 100:181] += 40  # a whistle-like call in bands 20-24 (low ones), frames 100-180
    m = np.zeros((P.n_mels, FRAMES), np.float32)
    m[P.n_mels - 60 :, 40:260] = 0.7  # a coarse evidence region (map rows: highest first)
    m[P.n_mels - 23, 140] = 1.0
    ev = evidence(m, axes=AXES, offset_s=5.0, threshold=0.5, db=db)
    centres = band_centres(n_mels=P.n_mels, fmin=P.fmin, fmax=P.fmax)  # lowest first
    assert ev.call_begin_s == pytest.approx(5.0 + 100 * FRAME_S - FRAME_S / 2)
    assert ev.call_end_s == pytest.approx(5.0 + 180 * FRAME_S + FRAME_S / 2)
    assert ev.call_low_hz == pytest.approx((centres[19] + centres[20]) / 2)  # band 20's edges
    assert ev.call_high_hz == pytest.approx((centres[24] + centres[25]) / 2)
    assert ev.box_begin_s < ev.call_begin_s < ev.call_end_s < ev.box_end_s  # much tighter
    assert ev.box_low_hz < ev.call_low_hz < ev.call_high_hz < ev.box_high_hz


def test_a_trills_pips_join_and_the_sound_nearest_the_peak_is_the_call():
    excess = np.zeros((40, 400))
    for start in range(100, 160, 12):  # pips of 4 frames every 12 (36 ms gaps): one trill
        excess[5:30, start : start + 4] = 30
    excess[10:15, 300:340] = 35  # a louder, separate sound in the same region
    region = np.ones_like(excess, bool)
    (a, b), (lo, hi) = call_box(excess, region, (20, 130), frame_s=FRAME_S)
    assert (a, b) == (100, 151) and (hi, lo) == (5, 29)  # the whole trill, not one pip
    (a, b), (lo, hi) = call_box(excess, region, (12, 320), frame_s=FRAME_S)
    assert (a, b) == (300, 339) and (hi, lo) == (10, 14)
    # outside the region nothing counts
    only_trill = np.zeros_like(region)
    only_trill[:, :200] = True
    assert call_box(excess, only_trill, (12, 320), frame_s=FRAME_S)[0] == (100, 151)


def test_no_call_box_where_nothing_stands_above_the_band_floor():
    db = _background(1)
    m = np.zeros((P.n_mels, FRAMES), np.float32)
    m[30:60, 100:200] = 1.0
    ev = evidence(m, axes=AXES, threshold=0.5, db=db)  # noise only: nothing 10 dB above the floor
    assert np.isnan([ev.call_begin_s, ev.call_end_s, ev.call_low_hz, ev.call_high_hz]).all()
    assert not np.isnan(ev.box_begin_s)


def test_the_band_floor_is_each_bands_median_over_time():
    db = _background(2)
    db[7, :100] += 50  # a call for less than half the window does not move the floor much
    floor = band_floor(torch.from_numpy(db)).numpy()
    np.testing.assert_allclose(floor, np.median(db, axis=1), atol=2.5)
    assert floor[7] < -55
    # the CPU's selection gives what torch.median gives on a GPU: the lower median
    frames = torch.from_numpy(db)[None, :, ::FLOOR_STRIDE]
    assert torch.equal(band_floor(torch.from_numpy(db)[None]), frames.median(dim=-1).values)


def _frames(seconds: float) -> int:
    return round(seconds / FRAME_S)


def test_the_elements_of_one_call_join_and_a_sound_further_off_stays_out():
    """Two sweeps 0.1 s apart, then a high note and a low one 0.2 s on: one call of three
    elements at three pitches; a sound 0.6 s after it is another call."""
    excess = np.zeros((200, 552))
    for k in range(12):  # sweep 1: frames 100-111 falling from row 20 to 31
        excess[20 + k, 100 + k] = 30
    a = 112 + _frames(0.1)  # sweep 2, 0.1 s later
    for k in range(12):
        excess[20 + k, a + k] = 30
    hi = a + 12 + _frames(0.2)  # a high note (row 5) then a low one (row 150)
    excess[5, hi : hi + 15] = 30
    lo = hi + 15 + _frames(0.05)
    excess[150, lo : lo + 15] = 30
    far = lo + 15 + _frames(0.6)
    excess[60, far : far + 20] = 30
    region = np.ones_like(excess, bool)
    (first, last), (low_row, high_row) = call_box(excess, region, (25, 105), frame_s=FRAME_S)
    assert (first, last) == (100, lo + 14) and (high_row, low_row) == (5, 150)
    # one element alone keeps its tight box: no gap joins it to anything
    (first, last), (low_row, high_row) = call_box(excess, region, (60, far), frame_s=FRAME_S)
    assert (first, last) == (far, far + 19) and low_row == high_row == 60
    # with the old single-sound rule (no gap) the call is the one sweep nearest the peak
    assert call_box(excess, region, (25, 105), frame_s=FRAME_S, gap_s=0.0)[0] == (100, 111)
    # in Hz (rows 10 kHz down to 500 Hz), the low note lies 2.6 octaves below the sweeps: not
    # an element of their call; the high note, 0.3 octave above them, is
    freqs = np.geomspace(10_000, 500, 200)
    (first, last), (low_row, high_row) = call_box(
        excess, region, (25, 105), frame_s=FRAME_S, freqs_hz=freqs
    )
    assert (first, last) == (100, hi + 14) and (high_row, low_row) == (5, 31)


def test_a_calls_elements_join_whichever_of_them_the_peak_is_nearest():
    """A note series as the held-out family draws them: a high note, a low one 1.2 octaves
    under it, a middle-high one, a middle-low one, 0.2-0.3 s apart.  The first note is near
    the second in time only and near the third in pitch only; the series is one call all the
    same, found whole from any note (joining note by note from the first, it stayed one note)."""
    freqs = np.geomspace(10_000, 500, 200)  # rows: 10 kHz down to 500 Hz
    excess = np.zeros((200, 552))
    notes = [(66, 100), (122, 142), (78, 182), (112, 225)]  # (row, first frame), 20 frames each
    for row, start in notes:
        excess[row, start : start + 20] = 30
    excess[90, 400:420] = 30  # another bird's note 2 s later
    region = np.ones_like(excess, bool)
    for row, start in notes:
        (first, last), (low_row, high_row) = call_box(
            excess, region, (row, start + 10), frame_s=FRAME_S, freqs_hz=freqs
        )
        assert (first, last) == (100, 244) and (high_row, low_row) == (66, 122)
    assert call_box(excess, region, (90, 410), frame_s=FRAME_S, freqs_hz=freqs)[0] == (400, 419)


def test_sounds_are_taken_whole_but_only_sounds_the_region_holds_join():
    excess = np.zeros((100, 400))
    excess[40, 100:200] = 30  # a long whistle
    excess[70, 210:230] = 30  # a note 0.1 s after it
    region = np.zeros_like(excess, bool)
    region[30:50, 150:205] = True  # the CAM's region holds half of the whistle, not the note
    (first, last), (low_row, high_row) = call_box(excess, region, (40, 170), frame_s=FRAME_S)
    assert (first, last) == (100, 199) and low_row == high_row == 40
    region[65:75, 215:220] = True  # and now a corner of the note too
    (first, last), (low_row, high_row) = call_box(excess, region, (40, 170), frame_s=FRAME_S)
    assert (first, last) == (100, 229) and (high_row, low_row) == (40, 70)


def test_call_boxes_of_evidence_reach_outside_the_region_in_time_but_stop_at_nyquist():
    """Through :func:`evidence`: a call straddling the region's edge is found whole, and its
    high edge never passes the Nyquist frequency (fmax 13 kHz is above it at 22,050 Hz)."""
    db = _background(3)
    db[P.n_mels - 20 :, 300:340] += 40  # a broadband chip up into the empty top bands
    db[195, 270:330] += 40  # a whistle at 5.3 kHz (0.9 octave below) starting left of the region
    db[100, 300:330] += 40  # and a hum at 1.4 kHz, more than an octave below the chip
    m = np.zeros((P.n_mels, FRAMES), np.float32)
    m[:60, 290:400] = 0.7
    m[10, 320] = 1.0
    ev = evidence(m, axes=AXES, threshold=0.5, db=db)
    assert ev.call_high_hz == P.sample_rate / 2 and ev.box_high_hz == P.sample_rate / 2
    # the chip alone: the whistle's band lies outside the region
    assert ev.call_begin_s == pytest.approx(300 * FRAME_S - FRAME_S / 2)
    m[:, 290:400] = np.maximum(m[:, 290:400], 0.7)  # a region over every band
    ev = evidence(m, axes=AXES, threshold=0.5, db=db)
    # the whistle overlaps the chip in time: one call, the whistle whole from its first frame
    # (sounds are followed up to a call's gap, 0.3 s, beyond the region)
    assert ev.call_begin_s == pytest.approx(270 * FRAME_S - FRAME_S / 2)
    assert ev.call_low_hz == pytest.approx(AXES.low_hz[P.n_mels - 1 - 195])  # not the hum's


def test_dilate_is_the_maximum_filter_it_replaced():
    """The call box's joins: ORs of doubling shifts equal ``maximum_filter1d`` of width
    ``2 * reach + 1`` (its reflected edges add nothing a dilation would not)."""
    rng = np.random.default_rng(0)
    for density in (0.02, 0.3):
        mask = rng.random((37, 61)) < density
        for reach in (1, 2, 3, 5, 6, 7, 12, 40):
            for axis in (0, 1):
                want = ndimage.maximum_filter1d(mask.view(np.uint8), 2 * reach + 1, axis=axis)
                assert np.array_equal(_dilate(mask, reach, axis=axis), want.astype(bool))


def test_components_are_scipys_connected_components():
    """The call box's grouping: labels that split the sounds as scipy's graph search does."""
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(1)
    for n, p in [(1, 0.5), (2, 0.0), (2, 1.0), (8, 0.1), (30, 0.04), (60, 0.03), (200, 0.005)]:
        for _ in range(20):
            near = rng.random((n, n)) < p
            near = near | near.T | np.eye(n, dtype=bool)
            k, want = connected_components(near, directed=False)
            got = _components(near)
            assert len(np.unique(got)) == k
            assert np.array_equal(got[:, None] == got[None, :], want[:, None] == want[None, :])
