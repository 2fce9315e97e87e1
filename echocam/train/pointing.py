"""The pointing game (Zhang et al. 2016) on spectrograms: is a CAM's peak inside the call's box?

The CAM is a 7x7 grid over the window's image, so its peak is only known to a cell; a hit allows
half a cell around the box: ``window_seconds / 14`` in time, and in frequency half of 1/7 of the
mel rows.  Rows are equally spaced in mel (the Slaney scale of the front end's filterbank), so
that half-cell is ``n_mels / 14`` rows of ``(mel(fmax) - mel(fmin)) / (n_mels + 1)`` mel each,
and the box's edges are widened by it in mel, not in Hz.
"""

from __future__ import annotations

from dataclasses import dataclass

from echocam.explain.localise import Evidence
from echocam.settings import Params
from echocam.signal.melscale import hz_to_mel


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
    start, end, low, high = box
    t = ev.peak_time_s
    in_time = start - tolerance.seconds <= t <= end + tolerance.seconds
    mel = float(hz_to_mel(ev.peak_freq_hz))
    lo, hi = float(hz_to_mel(low)), float(hz_to_mel(high))
    return in_time and lo - tolerance.mel <= mel <= hi + tolerance.mel


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

    ``model`` is a :class:`echocam.explain.model.LoadedModel`; ``windows`` are waveforms (n,) at the
    analysis rate, each one analysis window starting at 0 s, and ``boxes`` the calls in each
    (seconds from the window's start, Hz).  The peak comes from the display map
    (:func:`echocam.explain.cam.display_maps`, as the overlays draw it) through
    :func:`echocam.explain.localise.evidence`.
    """
    import torch

    from echocam.explain.cam import class_activation_maps, display_maps
    from echocam.explain.localise import Axes, evidence
    from echocam.signal.frontend import FrontEnd
    from echocam.train.dataset import model_inputs

    fe = FrontEnd(params, device)
    net = model.net.to(fe.device).eval()
    tol = Tolerance.half_cell(params)
    hits: list[bool] = []
    with torch.inference_mode():
        for b0 in range(0, len(windows), batch_size):
            waves = windows[b0 : b0 + batch_size]
            x = model_inputs(fe, waves)
            _, features = net(x)
            ids = torch.tensor(class_ids[b0 : b0 + batch_size], device=fe.device)[:, None]
            cams = class_activation_maps(features, net.fc_weight, ids)
            for i, w in enumerate(waves):
                frames = 1 + w.shape[0] // params.hop_length
                maps = display_maps(cams[i : i + 1], size=(params.n_mels, frames))
                axes = Axes.for_params(params, frames=frames)
                ev = evidence(maps[0, 0].cpu().numpy(), axes=axes)
                hits.append(any(hit(ev, box, tolerance=tol) for box in boxes[b0 + i]))
    return hits
