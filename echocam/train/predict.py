"""Class probabilities of labelled examples from their inference windows (no augmentation), and
where the true class's CAM points in them.

Used for validation during training and by ``echocam evaluate``.  A whole recording's windows
are those inference cuts (``echocam.signal.frontend.windowed``); its probabilities are the mean over
its windows, as a record's ``mean_probs``.  An annotated span is the window centred on it (the
windows inside it when it is longer than a window), and its box (the span, and its band where
the labels give one) is the pointing game's (:mod:`echocam.train.pointing`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from echocam.bucket.storage import Store
from echocam.errors import EchoCamError
from echocam.explain.model import HookedResNet18
from echocam.settings import Params
from echocam.signal import windows
from echocam.signal.frontend import FrontEnd
from echocam.train.augment import crop_start, mix_background
from echocam.train.dataset import Skipped, example_samples, model_inputs
from echocam.train.decoded import Decoded
from echocam.train.labels import Example
from echocam.train.pointing import Tolerance, cam_peaks, hit_at

#: A whole background recording (``--background-class``) is judged on at most this many of its
#: windows, evenly spread: a 15-minute dawn chorus would otherwise cost 180 windows an epoch.
BACKGROUND_WINDOWS = 8


def eval_starts(
    n: int, *, params: Params, span: tuple[float, float] | None
) -> tuple[np.ndarray, int]:
    """(starts (w,) samples, length) of the windows that judge an example of ``n`` samples."""
    length = min(params.window_samples, n)
    if span is None:
        return windows.window_starts(n, window=length, hop=params.hop_samples), length
    sr = params.sample_rate
    a, b = int(span[0] * sr), min(n, int(np.ceil(span[1] * sr)))
    if b - a <= length:
        return np.array([crop_start(n, length=length, rng=None, span=(a, b))]), length
    inside = windows.window_starts(b - a, window=length, hop=params.hop_samples)
    return a + inside, length


@dataclass(frozen=True)
class Mix:
    """Recordings of the ``--background`` source (``keys``) whose stretches are added to the
    labelled windows at ``snr_db`` (window RMS over stretch RMS, dB)."""

    keys: Sequence[str]
    snr_db: float


@dataclass
class Predictions:
    """Per example: mean class probabilities (E, C) (NaN rows: skipped), window counts, and the
    fraction of its windows whose true-class CAM peaks in its box (E,) (NaN: no box)."""

    probs: np.ndarray
    n_windows: np.ndarray
    skipped: dict[str, Skipped]
    pointed: np.ndarray

    def pointing_game(self) -> float | None:
        """The mean over the examples with a box; None where none has one."""
        boxed = ~np.isnan(self.pointed)
        return float(self.pointed[boxed].mean()) if boxed.any() else None


def _windows(
    store: Store,
    examples: Sequence[Example],
    *,
    params: Params,
    pool: Executor,
    background: Store | None = None,
    decoded: Decoded | None = None,
    mix: Mix | None = None,
) -> Iterator[tuple[int, list[tuple[float, np.ndarray]] | Skipped]]:
    """(example index, its windows' (start s, samples) or why not), loading 8 examples ahead on
    ``pool`` (through ``decoded``, if given); ``background`` holds the examples marked
    ``background``.  With ``mix``, every window of an example not marked ``background`` has a
    stretch of one of ``mix.keys`` (of ``background``) added, the same one each time."""
    decoded = decoded or Decoded(None, params=params)

    # a few recordings mixed into every example: loaded once a pass, not once an example (with
    # --decode-cache off, decoded once)
    mix_samples = lru_cache(maxsize=None)(lambda key: decoded.samples(background, key))

    def mixed(i: int, windows: list[np.ndarray]) -> list[np.ndarray]:
        bg = mix_samples(mix.keys[i % len(mix.keys)])
        rng = np.random.default_rng([i, 0x5C])  # the same stretch every epoch
        return [mix_background(w, bg, snr_db=mix.snr_db, rng=rng) for w in windows]

    def load(i: int) -> list[np.ndarray] | Skipped:
        ex = examples[i]
        try:
            samples = example_samples(decoded, ex, store=store, background=background)
        except (EchoCamError, FileNotFoundError) as e:
            return Skipped.of(ex, e)
        starts, length = eval_starts(samples.shape[0], params=params, span=ex.span)
        if ex.background and len(starts) > BACKGROUND_WINDOWS:  # evenly spread, first and last
            starts = starts[np.linspace(0, len(starts) - 1, BACKGROUND_WINDOWS).round().astype(int)]
        got = [samples[s : s + length] for s in starts]
        if mix is not None and not ex.background:
            # a bad background is not worth failing an example for: it stays unmixed
            with contextlib.suppress(EchoCamError, FileNotFoundError):
                got = mixed(i, got)
        return [(s / params.sample_rate, w) for s, w in zip(starts, got, strict=True)]

    ahead = 8
    futures = [pool.submit(load, i) for i in range(min(ahead, len(examples)))]
    for i in range(len(examples)):
        if i + ahead < len(examples):
            futures.append(pool.submit(load, i + ahead))
        yield i, futures[i].result()
        futures[i] = None  # drop the decoded samples


@torch.inference_mode()
def predict(
    net: HookedResNet18,
    frontend: FrontEnd,
    store: Store,
    examples: Sequence[Example],
    *,
    params: Params,
    n_classes: int,
    pool: Executor,
    batch_size: int,
    background: Store | None = None,
    decoded: Decoded | None = None,
    mix: Mix | None = None,
) -> Predictions:
    """Mean softmax probabilities of every example's windows, and for examples with a box the
    pointing game of their windows (``net`` gives logits and layer4 features).  ``background``:
    the store of the examples from ``--background``; ``decoded``: where recordings are kept
    decoded (:class:`echocam.train.decoded.Decoded`); ``mix``: stretches of ``background``'s
    recordings added to the windows of the other examples."""
    probs = np.full((len(examples), n_classes), np.nan, np.float32)
    sums = np.zeros((len(examples), n_classes), np.float64)
    counts = np.zeros(len(examples), np.int64)
    hits = np.zeros(len(examples), np.int64)
    skipped: dict[str, Skipped] = {}
    queue: list[tuple[int, float, np.ndarray]] = []
    cuda = frontend.device.type == "cuda"
    top_hz = min(params.fmax, params.sample_rate / 2)
    boxes = [e.box(top_hz=top_hz) for e in examples]
    tolerance = Tolerance.half_cell(params)

    def flush() -> None:
        x = model_inputs(frontend, [w for *_, w in queue])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits, features = net(x)
        p = logits.float().softmax(-1).cpu().numpy()
        boxed = [j for j, (i, *_) in enumerate(queue) if boxes[i] is not None]
        if boxed:
            labels = [examples[queue[j][0]].label for j in boxed]
            frames = [1 + queue[j][2].shape[0] // params.hop_length for j in boxed]
            peaks = cam_peaks(features[boxed], net.fc_weight, labels, params=params, frames=frames)
            for j, (t, f) in zip(boxed, peaks, strict=True):
                i, start_s, _ = queue[j]
                hits[i] += hit_at(t + start_s, f, boxes[i], tolerance=tolerance)
        for (i, *_), row in zip(queue, p, strict=True):
            sums[i] += row
            counts[i] += 1
        queue.clear()

    for i, got in _windows(
        store, examples, params=params, pool=pool, background=background, decoded=decoded, mix=mix
    ):
        if isinstance(got, Skipped):
            skipped.setdefault(got.key, got)
            continue
        for start_s, w in got:
            queue.append((i, start_s, w))
            if len(queue) == batch_size:
                flush()
    if queue:
        flush()
    seen = counts > 0
    probs[seen] = (sums[seen] / counts[seen, None]).astype(np.float32)
    pointed = np.full(len(examples), np.nan)
    judged = seen & np.array([b is not None for b in boxes], bool)
    pointed[judged] = hits[judged] / counts[judged]
    return Predictions(probs, counts, skipped, pointed)
