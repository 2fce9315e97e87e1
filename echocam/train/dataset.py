"""Training windows streamed from a store: class-balanced epochs, decoded on a thread pool.

Nothing is held in memory beyond the batches in flight: each window reads its recording's
samples (decoded by the inference decoder once, then kept on disk: ``echocam.train.decoded``),
cuts and augments one window and drops the rest.  Up to ``prefetch`` batches are prepared on the
pool while the device trains on the current one.  Every window's randomness comes from its own
generator seeded by (seed, epoch, position), so a run is reproducible whatever the threads do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from echocam.bucket.storage import Store
from echocam.errors import EchoCamError
from echocam.settings import Params
from echocam.signal.frontend import FrontEnd
from echocam.train.augment import apply_gain, crop_start, mask_db, mix_background, rms
from echocam.train.config import Augment
from echocam.train.decoded import Decoded
from echocam.train.labels import Box, Example


@dataclass
class Window:
    """One training window: ``samples`` (length,) float32 at the analysis rate, its label, and
    where another class's window was mixed in, that class and its share of the target."""

    samples: np.ndarray
    label: int
    example: int  # index into the loader's examples
    mixed: tuple[int, float] | None = None  # (label, share in [0, 1))
    #: the labelled boxes in the window (start_s, end_s from its start, low_hz, high_hz): none
    #: for a --background window, None where the labels give no boxes or a class was mixed in
    boxes: tuple[Box, ...] | None = None

    def target(self, n_classes: int) -> np.ndarray:
        """The training target (n_classes,) float32: one-hot, or split between two classes."""
        t = np.zeros(n_classes, np.float32)
        t[self.label] = 1.0
        if self.mixed is not None:
            other, share = self.mixed
            t[self.label] -= share
            t[other] += share
        return t


@dataclass(frozen=True)
class Skipped:
    """An example whose recording could not be used: the error code and message."""

    key: str  # Example.recording: the key, or background:KEY for the --background source's
    code: str
    message: str

    @classmethod
    def of(cls, ex: Example, error: EchoCamError | FileNotFoundError) -> Skipped:
        """Why ``ex`` is skipped: the error's code, or ``download_failed`` for a missing file."""
        if isinstance(error, EchoCamError):
            return cls(ex.recording, error.code, error.message)
        return cls(ex.recording, "download_failed", f"not found: {error}")


def example_samples(
    decoded: Decoded, ex: Example, *, store: Store, background: Store | None
) -> np.ndarray:
    """The decoded samples (n,) of ``ex``'s recording: from ``background`` (the --background
    source) where ``ex`` is one of its recordings, else from ``store``."""
    return decoded.samples(background if ex.background else store, ex.key)


def balanced_order(
    labels: Sequence[int], *, n: int, n_classes: int, seed: int, epoch: int
) -> np.ndarray:
    """``n`` example indices for one epoch, classes drawn equally often.

    Each class contributes ``ceil(n / classes)`` draws from its examples in a seeded shuffle,
    cycled (a small class repeats, a large one is sampled); the draws are then shuffled and cut
    to ``n``.  Classes without examples are left out.
    """
    rng = np.random.default_rng([seed, epoch, 0xBA1])
    labels = np.asarray(labels)
    present = [c for c in range(n_classes) if (labels == c).any()]
    per = -(-n // max(1, len(present)))
    draws = []
    for c in present:
        members = np.flatnonzero(labels == c)
        reps = -(-per // members.size)
        cycled = np.concatenate([rng.permutation(members) for _ in range(reps)])
        draws.append(cycled[:per])
    order = np.concatenate(draws) if draws else np.zeros(0, np.int64)
    return rng.permutation(order)[:n]


class Backgrounds:
    """Unlabelled recordings to mix in: keys listed once, a few decoded ones kept (LRU);
    ``decoded`` keeps them all decoded on disk."""

    def __init__(
        self,
        store: Store,
        *,
        params: Params,
        extensions: tuple[str, ...],
        cache: int = 32,
        decoded: Decoded | None = None,
    ):
        self.store, self.params = store, params
        self.decoded = decoded or Decoded(None, params=params)
        self.keys = [info.key for info in store.list(suffixes=extensions)]
        if not self.keys:
            raise ValueError(f"no audio under the background source {store.uri}")
        self._load = lru_cache(maxsize=cache)(self._decode)

    def _decode(self, key: str) -> np.ndarray | None:
        try:
            return self.decoded.samples(self.store, key)
        except EchoCamError:
            return None  # a bad background is not worth failing a window for

    def sample(self, rng: np.random.Generator) -> np.ndarray | None:
        return self._load(self.keys[int(rng.integers(len(self.keys)))])


class Loader:
    """Batches of augmented training windows, prepared on ``pool`` ahead of their use; their
    recordings decoded by ``decoded`` (None: decoded at each window)."""

    def __init__(
        self,
        store: Store,
        examples: Sequence[Example],
        *,
        params: Params,
        augment: Augment,
        pool: Executor,
        batch_size: int,
        prefetch: int = 4,
        seed: int = 0,
        backgrounds: Backgrounds | None = None,
        decoded: Decoded | None = None,
    ):
        self.store, self.examples, self.params = store, list(examples), params
        self.decoded = decoded or Decoded(None, params=params)
        self.augment, self.pool = augment, pool
        self.batch_size, self.prefetch, self.seed = batch_size, prefetch, seed
        self.backgrounds = backgrounds
        self.skipped: dict[str, Skipped] = {}  # Example.recording → why; never fetched again
        self._labels = np.array([e.label for e in self.examples])
        #: position in the next epoch's order → the start (samples) of its window, where it is
        #: chosen before the epoch (``echocam.train.mining``)
        self.starts: dict[int, int] = {}
        top_hz = min(params.fmax, params.sample_rate / 2)
        self._boxes: dict[str, list[Box]] = {}
        for e in self.examples:
            if (box := e.box(top_hz=top_hz)) is not None:
                self._boxes.setdefault(e.recording, []).append(box)

    def samples(self, ex: Example) -> np.ndarray:
        """The decoded samples (n,) of ``ex``'s recording."""
        background = self.backgrounds.store if self.backgrounds is not None else None
        return example_samples(self.decoded, ex, store=self.store, background=background)

    def window(
        self, index: int, *, rng: np.random.Generator | None, start: int | None = None
    ) -> Window:
        """The window of example ``index``: random (``rng``) or centred (None, no augmentation);
        from ``start`` (samples) where given."""
        ex, aug = self.examples[index], self.augment
        x, start = self._cut(ex, rng=rng if aug.shift else None, start=start)
        boxes = self._window_boxes(ex, start=start, length=x.shape[0])
        mixed = None
        if rng is not None:
            if self.backgrounds is not None and rng.random() < aug.background_p:
                bg = self.backgrounds.sample(rng)
                if bg is not None:
                    x = mix_background(x, bg, snr_db=float(rng.uniform(*aug.snr_db)), rng=rng)
            if aug.mix_p > 0 and rng.random() < aug.mix_p:
                x, mixed = self._mix(x, ex.label, rng=rng)
            if aug.gain_db != (0.0, 0.0):
                x = apply_gain(x, float(rng.uniform(*aug.gain_db)))
        return Window(x, ex.label, index, mixed, None if mixed else boxes)

    def _window_boxes(self, ex: Example, *, start: int, length: int) -> tuple[Box, ...] | None:
        """The labelled boxes of ``ex``'s recording that overlap its window at ``start``
        (samples), in the window's seconds; none for a --background recording, None where its
        labels give no box."""
        if ex.background:
            return ()
        boxes = self._boxes.get(ex.recording)
        if boxes is None:
            return None
        t0, t1 = start / self.params.sample_rate, (start + length) / self.params.sample_rate
        return tuple((a - t0, b - t0, lo, hi) for a, b, lo, hi in boxes if a < t1 and b > t0)

    def _cut(
        self, ex: Example, *, rng: np.random.Generator | None, start: int | None = None
    ) -> tuple[np.ndarray, int]:
        """A window of ``ex``'s recording: random (``rng``), centred, or from ``start``; (a copy,
        its start in samples)."""
        p = self.params
        samples = self.samples(ex)
        n = samples.shape[0]
        length = min(p.window_samples, n)
        if start is not None:
            return samples[start : start + length].copy(), start
        span = None
        if ex.span is not None:
            span = (int(ex.start_s * p.sample_rate), min(n, int(np.ceil(ex.end_s * p.sample_rate))))
        start = crop_start(n, length=length, rng=rng, span=span)
        if ex.background and rng is not None and self.augment.hard_negatives > 1:
            starts = [start] + [
                crop_start(n, length=length, rng=rng, span=span)
                for _ in range(self.augment.hard_negatives - 1)
            ]
            start = max(starts, key=lambda s: rms(samples[s : s + length]))
        return samples[start : start + length].copy(), start

    def _mix(
        self, x: np.ndarray, label: int, *, rng: np.random.Generator
    ) -> tuple[np.ndarray, tuple[int, float] | None]:
        """``x`` plus a random window of another class at a random level, and that class with
        its share of the target (its amplitude's share of the two); unchanged where there is
        no other class or its recording fails."""
        others = np.flatnonzero(self._labels != label)
        if others.size == 0:
            return x, None
        other = self.examples[int(others[rng.integers(others.size)])]
        try:
            y, _ = self._cut(other, rng=rng)
        except (EchoCamError, FileNotFoundError):
            return x, None
        n = min(x.shape[0], y.shape[0])
        rms_x, rms_y = rms(x), rms(y[:n])
        if rms_x == 0.0 or rms_y == 0.0:
            return x, None
        weight = 10 ** (float(rng.uniform(*self.augment.mix_gain_db)) / 20)
        x[:n] += y[:n] * np.float32(rms_x / rms_y * weight)
        return x, (other.label, weight / (1 + weight))

    def _try(self, position: int, index: int, epoch: int) -> Window | Skipped:
        rng = np.random.default_rng([self.seed, epoch, position])
        try:
            return self.window(index, rng=rng, start=self.starts.get(position))
        except (EchoCamError, FileNotFoundError) as e:
            return Skipped.of(self.examples[index], e)

    def epoch(self, order: Sequence[int], *, epoch: int) -> Iterator[list[Window]]:
        """Batches of the windows of examples ``order`` (indices), in that order.

        Examples whose recording fails to load are skipped (and remembered in ``skipped``), so
        a batch may be short by them.
        """
        pending = deque()
        todo = iter(enumerate(order))

        def submit() -> None:
            for pos, index in todo:
                if self.examples[index].recording not in self.skipped:
                    pending.append(self.pool.submit(self._try, pos, int(index), epoch))
                    return

        try:
            for _ in range(self.prefetch * self.batch_size):
                submit()
            batch: list[Window] = []
            while pending:
                got = pending.popleft().result()
                submit()
                if isinstance(got, Skipped):
                    self.skipped.setdefault(got.key, got)
                    continue
                batch.append(got)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            for f in pending:
                f.cancel()


def model_inputs(
    frontend: FrontEnd,
    waves: Sequence[np.ndarray],
    *,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
    frames_per_s: float = 0.0,
) -> torch.Tensor:
    """The network input (b, 3, h, w) of waveforms through ``frontend``, optionally masked.

    Waveforms of one length go through the front end together (a recording shorter than a
    window is a window of its own length, as at inference); masks (``augment`` and
    ``generator`` given) are applied to the dB before the colour map.
    """
    device = frontend.device
    pin = device.type == "cuda"
    images: list[torch.Tensor | None] = [None] * len(waves)
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        by_length.setdefault(w.shape[0], []).append(i)
    for length, rows in by_length.items():
        host = torch.empty((len(rows), length), dtype=torch.float32, pin_memory=pin)
        view = host.numpy()
        for j, i in enumerate(rows):
            view[j] = waves[i]
        db = frontend.db(host.to(device, non_blocking=True))
        if augment is not None and generator is not None:
            db = mask_db(db, augment=augment, frames_per_s=frames_per_s, generator=generator)
        _, img8 = frontend.images(db)
        for j, i in enumerate(rows):
            images[i] = img8[j]
    return frontend.model_input(torch.stack(images))
