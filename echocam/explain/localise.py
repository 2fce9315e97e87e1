"""Where the evidence is: a display map's peak and evidence box, in seconds and Hertz.

Pure maths on arrays.  A display map (see :func:`echocam.explain.cam.display_maps`) has the shape of
its window's spectrogram, (n_mels, frames): row 0 is the highest mel band (the image is drawn with
low frequencies at the bottom) and column c is the STFT frame centred ``c * hop_length`` samples
after the window's start.

The evidence box is as coarse as the CAM: a layer4 cell is 32 model-image pixels (0.7 s by ~37
mel bands at the defaults), so it cannot be tighter than about one cell.  The *call box* narrows
it with the spectrogram: the sounds loud against their band's background that the evidence
region holds, the one nearest the peak and those within :data:`CALL_GAP_S` of it (the elements
of one call), each taken whole (see :func:`call_box`).  No box reaches above the Nyquist
frequency, where a spectrogram whose ``fmax`` lies beyond it has only empty bands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from scipy import ndimage

from echocam.signal import melscale

#: A call's pixels stand at least this far above their band's median over the window (dB)...
CALL_MIN_EXCESS_DB = 10.0
#: ...and within this of the loudest such pixel in the evidence region (dB).
CALL_WITHIN_DB = 20.0
#: Pixels this close in time (s), and one band apart, belong to one sound: a trill's pips join.
CALL_BRIDGE_S = 0.05
#: Sounds in the evidence region at most this far apart in time (s)...
CALL_GAP_S = 0.3
#: ...and in frequency (octaves between their bands) are elements of one call: syllables of a
#: phrase, a high note then a lower one; not a low rumble under a high trill.
CALL_GAP_OCTAVES = 1.0
#: A band's floor is the median of every 4th frame (36 ms apart at the defaults): the same
#: background level for a quarter of the work.
FLOOR_STRIDE = 4


@dataclass(frozen=True)
class Axes:
    """The time (s) and frequency (Hz) of every cell of a window's display map."""

    times_s: np.ndarray  # (frames,) seconds from the window's start
    freqs_hz: np.ndarray  # (n_mels,) centre frequency of each row, row 0 the highest
    low_hz: np.ndarray  # (n_mels,) where each row's band meets the one below (its lower edge)
    high_hz: np.ndarray  # (n_mels,) and the one above: halfway between neighbouring centres
    frame_s: float  # seconds between frames (a pixel spans half of it either side of its time)
    top_hz: float  # the highest frequency with signal: fmax, or the Nyquist frequency below it

    @classmethod
    def of(
        cls,
        *,
        frames: int,
        sample_rate: int,
        hop_length: int,
        n_mels: int,
        fmin: float,
        fmax: float,
    ) -> Axes:
        """The axes of a (n_mels, frames) map at these analysis parameters."""
        centres = band_centres(n_mels=n_mels, fmin=fmin, fmax=fmax)  # lowest first
        between = (centres[:-1] + centres[1:]) / 2
        return cls(
            times_s=np.arange(frames) * (hop_length / sample_rate),
            freqs_hz=centres[::-1].copy(),
            low_hz=np.concatenate([[fmin], between])[::-1].copy(),
            high_hz=np.concatenate([between, [fmax]])[::-1].copy(),
            frame_s=hop_length / sample_rate,
            top_hz=min(fmax, sample_rate / 2),
        )

    @classmethod
    def for_params(cls, params, *, frames: int) -> Axes:
        """The axes of a window of ``frames`` at ``params`` (an ``echocam.settings.Params``)."""
        return cls.of(
            frames=frames,
            sample_rate=params.sample_rate,
            hop_length=params.hop_length,
            n_mels=params.n_mels,
            fmin=params.fmin,
            fmax=params.fmax,
        )


@cache
def band_centres(*, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Centre frequency (Hz) of each mel band, lowest first: those of ``librosa.filters.mel``.

    The Slaney filterbank's band i is a triangle from edge i to edge i + 2 of ``n_mels + 2``
    mel-spaced edges; its centre is edge i + 1.
    """
    centres = melscale.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax)[1:-1]
    centres.setflags(write=False)
    return centres


@dataclass(frozen=True)
class Evidence:
    """A map's peak, the box around it and the call box inside that, in seconds (from the
    recording's start) and Hz; the call box is NaN where no call was found."""

    peak_time_s: float
    peak_freq_hz: float
    box_begin_s: float
    box_end_s: float
    box_low_hz: float
    box_high_hz: float
    call_begin_s: float = math.nan
    call_end_s: float = math.nan
    call_low_hz: float = math.nan
    call_high_hz: float = math.nan


def evidence(
    display_map: np.ndarray,
    *,
    axes: Axes,
    offset_s: float = 0.0,
    threshold: float = 0.5,
    db: np.ndarray | None = None,
    gap_s: float = CALL_GAP_S,
) -> Evidence:
    """The peak of ``display_map`` (n_mels, frames), its evidence box and, given the window's
    spectrogram ``db`` (n_mels, frames) in dB with row 0 the *lowest* band (as the front end
    makes it), its call box.

    The box bounds the connected region (4-connected cells) around the peak where the map is
    ``>= threshold`` (times of its first and last frames, centres of its lowest and highest
    bands).  ``offset_s`` is the window's start in the recording.  A constant map (no evidence
    anywhere) peaks at its first cell and boxes the whole window, as the threshold selects all.
    """
    maps = torch.from_numpy(np.ascontiguousarray(display_map))[None]
    peak, mask = peaks_and_masks(maps, threshold=threshold)
    floor = None if db is None else band_floor(torch.from_numpy(db)).numpy()
    return region_evidence(
        mask[0].numpy(), int(peak[0]), axes=axes, offset_s=offset_s, db=db, floor=floor, gap_s=gap_s
    )


def band_floor(db: torch.Tensor) -> torch.Tensor:
    """Each band's background level: dB (..., n_mels, frames) → its median over every
    :data:`FLOOR_STRIDE`-th frame (..., n_mels), the lower median of an even count as
    ``torch.median``.  Calls are brief against a window, so the median is the band's noise."""
    frames = db[..., ::FLOOR_STRIDE]
    if db.device.type == "cpu":  # numpy's selection is linear; torch's CPU median sorts
        k = (frames.shape[-1] - 1) // 2
        return torch.from_numpy(np.partition(frames.numpy(), k, axis=-1)[..., k])
    return frames.median(dim=-1).values


def peaks_and_masks(maps: torch.Tensor, *, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Display maps (..., n_mels, frames) on any device → (peak (...) int64, the flat index of each
    map's first maximum; mask (..., n_mels, frames) bool, where the map is ``>= threshold``, or
    at its peak where the peak is below).  The batched half of :func:`evidence`, on the device
    that made the maps; :func:`region_evidence` finishes it on the host."""
    top, peak = maps.flatten(-2).max(dim=-1)  # first maximum, as np.argmax
    level = top.clamp_max(threshold)[..., None, None]
    return peak, maps >= level


def region_evidence(
    mask: np.ndarray,
    peak: int,
    *,
    axes: Axes,
    offset_s: float,
    db: np.ndarray | None = None,
    floor: np.ndarray | None = None,
    gap_s: float = CALL_GAP_S,
) -> Evidence:
    """The evidence of one map from its ``mask`` (n_mels, frames) bool and the flat index of its
    ``peak`` (see :func:`peaks_and_masks`): the box of the mask's connected region there, and
    with the window's ``db`` (n_mels, frames, row 0 the lowest band) and its :func:`band_floor`
    ``floor`` (n_mels,), the :func:`call_box` of that region (elements ``gap_s`` apart join)."""
    row, col = np.unravel_index(peak, mask.shape)
    # Label only the rows and columns the mask touches: often a small part of the map.
    r0, r1 = _span(mask.any(axis=1))
    c0, c1 = _span(mask.any(axis=0))
    labels, _ = ndimage.label(mask[r0:r1, c0:c1])
    own = labels == labels[row - r0, col - c0]
    # its box from projections: a tenth of find_objects' time, which boxes every label
    rows, cols = (slice(*_span(own.any(axis=a))) for a in (1, 0))
    call = {}
    if db is not None and floor is not None:
        # Sounds are taken whole as far as a call's gap beyond the region in time, in every
        # band; the spectrogram highest band first, as the map.
        reach = round(gap_s / axes.frame_s)
        e0, e1 = c0 + cols.start, c0 + cols.stop  # the region's own frames
        d0, d1 = max(0, e0 - reach), min(mask.shape[1], e1 + reach)
        excess = db[::-1, d0:d1] - floor[::-1, None]
        inside = np.zeros(excess.shape, bool)
        inside[r0:r1, e0 - d0 : e1 - d0] = own[:, cols]
        found = call_box(
            excess,
            inside,
            (row, col - d0),
            frame_s=axes.frame_s,
            gap_s=gap_s,
            freqs_hz=axes.freqs_hz,
        )
        if found is not None:
            (a, b), (lo, hi) = found
            call = dict(
                call_begin_s=float(offset_s + axes.times_s[d0 + a] - axes.frame_s / 2),
                call_end_s=float(offset_s + axes.times_s[d0 + b] + axes.frame_s / 2),
                call_low_hz=float(axes.low_hz[lo]),
                call_high_hz=min(float(axes.high_hz[hi]), axes.top_hz),
            )
    return Evidence(
        peak_time_s=float(offset_s + axes.times_s[col]),
        peak_freq_hz=float(axes.freqs_hz[row]),
        box_begin_s=float(offset_s + axes.times_s[c0 + cols.start]),
        box_end_s=float(offset_s + axes.times_s[c0 + cols.stop - 1]),
        box_low_hz=min(float(axes.freqs_hz[r0 + rows.stop - 1]), axes.top_hz),
        box_high_hz=min(float(axes.freqs_hz[r0 + rows.start]), axes.top_hz),
        **call,
    )


def call_box(
    excess: np.ndarray,
    region: np.ndarray,
    peak: tuple[int, int],
    *,
    frame_s: float,
    min_excess_db: float = CALL_MIN_EXCESS_DB,
    within_db: float = CALL_WITHIN_DB,
    bridge_s: float = CALL_BRIDGE_S,
    gap_s: float = CALL_GAP_S,
    freqs_hz: np.ndarray | None = None,
    gap_octaves: float = CALL_GAP_OCTAVES,
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The call the evidence points at: ((first, last) frame, (lowest, highest) row) or None.

    ``excess`` (rows, frames) is the spectrogram in dB above each band's floor, ``region``
    (rows, frames) bool the evidence region, ``peak`` the (row, frame) of the map's peak; row 0
    is the highest band.  Loud pixels stand at least ``min_excess_db`` above their band's floor
    and within ``within_db`` of the region's loudest; loud pixels at most ``bridge_s`` apart in
    time and one band apart join one *sound*.  The sounds with a loud pixel in the region group
    into calls: two groups join while their boxes lie within ``gap_s`` of each other in time
    and, given each row's centre frequency ``freqs_hz`` (rows,), within ``gap_octaves`` in
    frequency (see :func:`_elements`).  The call is the group of the sound with the region's
    loud pixel nearest the peak.  Sounds are taken whole, in or out of the region, as far as
    ``excess`` reaches.
    None where the region has no loud pixel.
    """
    inside = excess[region]
    if inside.size == 0:
        return None
    loudest = float(inside.max())
    level = max(min_excess_db, loudest - within_db)
    loud = excess >= level
    if not (loud & region).any():
        return None
    # the loud pixels' bounding box: joining never needs what lies outside it
    (a0, a1), (b0, b1) = _span(loud.any(axis=1)), _span(loud.any(axis=0))
    loud, region = loud[a0:a1, b0:b1], region[a0:a1, b0:b1]
    peak = (peak[0] - a0, peak[1] - b0)
    seeds = loud & region
    reach = max(1, round(bridge_s / frame_s))
    sounds, _ = ndimage.label(_dilate(_dilate(loud, reach, axis=1), 1, axis=0))
    sounds[~loud] = 0  # each sound's own pixels, without the bridging
    rr, cc = np.nonzero(seeds)
    nearest = np.argmin((rr - peak[0]) ** 2 + (cc - peak[1]) ** 2)
    boxes = ndimage.find_objects(sounds)
    ks = np.unique(sounds[seeds])  # the sounds the region holds
    # each such sound's (top row, bottom row, first frame, last frame)
    spans = np.array([[s.start, s.stop - 1] for k in ks for s in boxes[k - 1]]).reshape(-1, 4)
    octave = None if freqs_hz is None else np.log2(np.maximum(freqs_hz[a0:a1], 1.0))
    group = _elements(spans, gap=round(gap_s / frame_s), octave=octave, gap_octaves=gap_octaves)
    call = spans[group == group[np.searchsorted(ks, sounds[rr[nearest], cc[nearest]])]]
    top, first, bottom, last = (int(v) for v in (*call[:, ::2].min(0), *call[:, 1::2].max(0)))
    return (b0 + first, b0 + last), (a0 + bottom, a0 + top)


def _elements(
    spans: np.ndarray, *, gap: int, octave: np.ndarray | None, gap_octaves: float
) -> np.ndarray:
    """Which call each sound belongs to: ``spans`` (sounds, 4) their (top row, bottom row, first
    frame, last frame); two groups of sounds join while their boxes lie within ``gap`` frames in
    time and, given each row's ``octave`` (log2 Hz), ``gap_octaves`` in frequency.  Returns
    (sounds,) group labels.  Joining grows boxes, and a bigger box is near more, so the groups are
    the same whichever sound the peak picked: a high note, a low one and a middle one between
    them in time make one call from any of the three."""
    group = np.arange(len(spans))
    while True:
        n = group.max() + 1
        box = np.tile([np.inf, -np.inf, np.inf, -np.inf], (n, 1))  # each group's box
        np.minimum.at(box, (group[:, None], [0, 2]), spans[:, [0, 2]])
        np.maximum.at(box, (group[:, None], [1, 3]), spans[:, [1, 3]])
        top, bottom, first, last = box.T
        near = (first[None, :] <= last[:, None] + gap) & (last[None, :] >= first[:, None] - gap)
        if octave is not None:  # rows run from high to low frequencies
            high, low = octave[top.astype(int)], octave[bottom.astype(int)]
            near &= (
                np.maximum(low[:, None] - high[None, :], low[None, :] - high[:, None])
                <= gap_octaves
            )
        merged = _components(near)
        if np.array_equal(merged, np.arange(n)):
            return group
        group = np.unique(merged, return_inverse=True)[1][group]


def _components(near: np.ndarray) -> np.ndarray:
    """The connected components of a symmetric (n, n) bool adjacency with a True diagonal:
    each node's label is the lowest index it reaches.  Labels spread to neighbours, then jump
    along their own labels; a few passes over n × n, where n is a region's sounds (tens), not
    scipy's graph (whose input checks cost more than the search here)."""
    label = np.arange(len(near))
    while True:
        spread = np.where(near, label[None, :], len(near)).min(axis=1)
        spread = spread[spread]
        if np.array_equal(spread, label):
            return label
        label = spread


def _dilate(mask: np.ndarray, reach: int, *, axis: int) -> np.ndarray:
    """``mask`` (2-d bool) grown by ``reach`` cells both ways along ``axis``: a maximum filter
    of width ``2 * reach + 1``, as ORs of shifted copies whose shifts double (1, 2, 4, ...),
    about a sixth of ``maximum_filter1d``'s time."""
    out, done, step = mask, 0, 1
    while done < reach:
        s = min(step, reach - done)
        grown = out.copy()
        a, b = [slice(None)] * 2, [slice(None)] * 2
        a[axis], b[axis] = slice(s, None), slice(None, -s)
        grown[tuple(a)] |= out[tuple(b)]
        grown[tuple(b)] |= out[tuple(a)]
        out, done, step = grown, done + s, step * 2
    return out


def _span(any_: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of the True entries of a 1-d bool array (which has one: callers check)."""
    hits = np.flatnonzero(any_)
    return int(hits[0]), int(hits[-1]) + 1
