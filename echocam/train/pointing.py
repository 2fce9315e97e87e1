"""The pointing game (Zhang et al. 2016) on spectrograms: is a CAM's peak inside the call's box?

The CAM of a 224 x 224 input is a 7x7 grid over the window's image, so its peak is only known to
a cell; a hit allows half such a cell around the box: ``window_seconds / 14`` in time, and in
frequency half of 1/7 of the mel rows.  Rows are equally spaced in mel (the Slaney scale of the
front end's filterbank), so that half-cell is ``n_mels / 14`` rows of ``(mel(fmax) - mel(fmin))
/ (n_mels + 1)`` mel each, and the box's edges are widened by it in mel, not in Hz.  The
tolerance is the same at every ``input_size`` (an unresized input's cells are smaller), so the
game compares sizes on one scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from echocam.explain.cam import CellGrid, class_activation_maps, display_maps
from echocam.explain.localise import CALL_GAP_S, Axes, Evidence
from echocam.settings import Params
from echocam.signal.melscale import hz_to_mel

#: A model whose macro-F1 is at least this...
CLASSIFIES_WELL = 0.8
#: ...but whose CAM peaks in the call's box less often than this is right for the wrong reasons.
POINTS_WELL = 0.6


def wrong_reasons(macro_f1: float, pointing: float | None) -> str | None:
    """The warning for a model that classifies well but whose CAMs point away from the calls
    (a shortcut: the level of the rest of the window, say); None where there is none."""
    if pointing is None or macro_f1 < CLASSIFIES_WELL or pointing >= POINTS_WELL:
        return None
    return (
        f"right for the wrong reasons? macro-F1 {macro_f1:.2f} but the true class's CAM peaks "
        f"in the labelled box in only {pointing:.0%} of the examples with one: the model may "
        "tell the classes by something other than their calls (look at its CAMs in the viewer)"
    )


@dataclass(frozen=True)
class Tolerance:
    """Half a CAM cell: seconds, and mel (Slaney) units."""

    seconds: float
    mel: float

    @classmethod
    def half_cell(cls, params: Params, *, grid: int = 7) -> Tolerance:
        span = float(hz_to_mel(params.fmax) - hz_to_mel(params.fmin))
        row = span / (params.n_mels + 1)  # mel between adjacent band centres
        return cls(params.window_seconds / (2 * grid), row * params.n_mels / (2 * grid))


def hit(
    ev: Evidence,
    box: tuple[float, float, float, float],
    *,
    tolerance: Tolerance,
) -> bool:
    """Whether the peak of ``ev`` lies in ``box`` (start_s, end_s, low_hz, high_hz) ± tolerance.

    Times are in the same frame (seconds from the recording's start).
    """
    return hit_at(ev.peak_time_s, ev.peak_freq_hz, box, tolerance=tolerance)


def hit_at(
    time_s: float, freq_hz: float, box: tuple[float, float, float, float], *, tolerance: Tolerance
) -> bool:
    """Whether a CAM peak at ``time_s``, ``freq_hz`` lies in ``box`` ± ``tolerance``."""
    start, end, low, high = box
    in_time = start - tolerance.seconds <= time_s <= end + tolerance.seconds
    mel = float(hz_to_mel(freq_hz))
    lo, hi = float(hz_to_mel(low)), float(hz_to_mel(high))
    return in_time and lo - tolerance.mel <= mel <= hi + tolerance.mel


def cam_peaks(
    features: torch.Tensor,
    fc_weight: torch.Tensor,
    labels: list[int],
    *,
    params: Params,
    frames: list[int],
) -> list[tuple[float, float]]:
    """Where the CAM of class ``labels[i]`` peaks in window i: (seconds from the window's start,
    Hz), as its display map places it (:func:`echocam.explain.localise.evidence`'s peak).

    ``features`` (b, 512, h, w) are the windows' layer4 features, ``frames[i]`` the frames of
    window i's spectrogram.
    """
    ids = torch.tensor(labels, device=features.device)[:, None]
    cams = class_activation_maps(features, fc_weight, ids)
    grid = CellGrid.of(params)
    peaks = []
    for j, n in enumerate(frames):
        shown = display_maps(cams[j : j + 1], size=(params.n_mels, n), grid=grid)[0, 0]
        row, col = divmod(int(shown.flatten().argmax()), n)  # the first maximum, as evidence's
        axes = Axes.for_params(params, frames=n)
        peaks.append((float(axes.times_s[col]), float(axes.freqs_hz[row])))
    return peaks


@dataclass(frozen=True)
class Localised:
    """What a model makes of windows: ``probs`` (n, classes) and, for each window, the
    :class:`Evidence` (peak, evidence box and call box) of the class it was asked about."""

    probs: np.ndarray
    evidence: list[Evidence]


def localise(
    model,
    windows: list,
    class_ids: list[int],
    *,
    params: Params,
    device: str = "cpu",
    batch_size: int = 16,
    gap_s: float = CALL_GAP_S,
) -> Localised:
    """Class probabilities of each window and the evidence of ``class_ids[i]``'s CAM in it.

    ``model`` is a :class:`echocam.explain.model.LoadedModel`; ``windows`` are waveforms (n,) at
    the analysis rate, each one analysis window starting at 0 s.  The evidence comes from the
    display map (:func:`echocam.explain.cam.display_maps`, as the overlays draw it) and the
    window's spectrogram, through :func:`echocam.explain.localise.evidence`, as a run's
    (``gap_s``: the call box's gap between elements).
    """
    from echocam.explain.localise import evidence
    from echocam.signal.frontend import FrontEnd

    fe = FrontEnd(params, device)
    net = model.net.at_output_stride(params.output_stride).to(fe.device).eval()
    found = []
    with torch.inference_mode():
        for b0 in range(0, len(windows), batch_size):
            waves = windows[b0 : b0 + batch_size]
            for length in sorted({w.shape[0] for w in waves}):
                rows = [i for i, w in enumerate(waves) if w.shape[0] == length]
                db = fe.db(torch.from_numpy(np.stack([waves[i] for i in rows])).to(fe.device))
                logits, features = net(fe.model_input(fe.images(db)[1]))
                ids = torch.tensor([class_ids[b0 + i] for i in rows], device=fe.device)[:, None]
                cams = class_activation_maps(features, net.fc_weight, ids)
                maps = (
                    display_maps(cams, size=tuple(db.shape[-2:]), grid=CellGrid.of(params))
                    .cpu()
                    .numpy()
                )
                axes = Axes.for_params(params, frames=db.shape[-1])
                for j, i in enumerate(rows):
                    ev = evidence(maps[j, 0], axes=axes, db=db[j].cpu().numpy(), gap_s=gap_s)
                    found.append((b0 + i, ev, logits[j].float().softmax(-1).cpu().numpy()))
    found.sort(key=lambda t: t[0])
    return Localised(np.stack([p for _, _, p in found]), [e for _, e, _ in found])


def play(
    model,
    windows: list,
    boxes: list[list[tuple[float, float, float, float]]],
    class_ids: list[int],
    *,
    params: Params,
    device: str = "cpu",
    batch_size: int = 16,
) -> list[bool]:
    """One pointing game per window: does the CAM of ``class_ids[i]`` peak in a box of it?

    ``windows`` and ``class_ids`` as :func:`localise`; ``boxes`` are the calls in each window
    (seconds from its start, Hz).
    """
    tol = Tolerance.half_cell(params)
    found = localise(model, windows, class_ids, params=params, device=device, batch_size=batch_size)
    return [
        any(hit(ev, box, tolerance=tol) for box in calls)
        for ev, calls in zip(found.evidence, boxes, strict=True)
    ]


def call_iou(ev: Evidence, box: tuple[float, float, float, float], *, params: Params) -> float:
    """IoU of the call box of ``ev`` with the true ``box`` (start_s, end_s, low_hz, high_hz) as
    the spectrogram can show it, in seconds by mel (0 where no call box was found).

    The truth is widened by what the analysis smears: a quarter of the STFT frame either side
    in time (the Hann window's half-width) and one band's spacing either side in mel (a tone
    reaches the triangle filters on both sides of it).  A pure tone's box is otherwise a few Hz
    tall and no spectrogram box could match it.
    """
    if math.isnan(ev.call_begin_s):
        return 0.0
    span = float(hz_to_mel(params.fmax) - hz_to_mel(params.fmin))
    row = span / (params.n_mels + 1)
    reach = params.n_fft / 4 / params.sample_rate
    start, end, low, high = box
    truth = (start - reach, end + reach, float(hz_to_mel(low)) - row, float(hz_to_mel(high)) + row)
    got = (ev.call_begin_s, ev.call_end_s, float(hz_to_mel(ev.call_low_hz)))
    got = (*got, float(hz_to_mel(ev.call_high_hz)))
    dt = max(0.0, min(truth[1], got[1]) - max(truth[0], got[0]))
    dm = max(0.0, min(truth[3], got[3]) - max(truth[2], got[2]))
    inter = dt * dm
    area = (truth[1] - truth[0]) * (truth[3] - truth[2]) + (got[1] - got[0]) * (got[3] - got[2])
    return inter / (area - inter) if area > inter else 0.0
