"""Synthetic bird species: calls of known shapes mixed into real recordings, every call's box known.

Three call types with different time-frequency shapes stand for three species:

- ``whistle``: a tonal whistle, one frequency held for 0.7-1.3 s with a slow vibrato (a long thin
  horizontal line);
- ``upsweep``: a fast exponential up-sweep over 1-1.6 octaves in 0.2-0.4 s (a diagonal);
- ``trill``: a pulse train, 6-9 short (25 ms) pips each sweeping down 3-4.5 kHz, at 8-12
  pulses per second (a tall block of ticks).

Their frequency ranges overlap (all between 1.5 and 9 kHz), so a model must learn the shapes,
not a frequency band.  Each call is added to a stretch of a real field recording (the
background) at a chosen signal-to-noise ratio; its box (start and end in seconds from the
clip's start, low and high frequency in Hz) is recorded.  Used by the training, pointing-game,
detection and viewer tests and benchmarks alike.

    bgs = backgrounds(paths)                       # decoded once, at 22050 Hz
    rng = np.random.default_rng(0)
    clip = make_clip(species="Synthetica tonalis", background=bgs[0], rng=rng,
                     duration_s=5.0, snr_db=8.0)
    clip.calls[0].box                              # (start_s, end_s, low_hz, high_hz)
    write_species(root, per_class=24, backgrounds=bgs, seed=0)   # root/<species>/*.wav
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from devtools.families import Sound, Species

SAMPLE_RATE = 22050

#: species name -> call type
SPECIES: dict[str, str] = {
    "Synthetica tonalis": "whistle",
    "Synthetica ascendens": "upsweep",
    "Synthetica trillans": "trill",
}
CALL_TYPES = tuple(SPECIES.values())
#: the class of clips without any call (background only)
NOISE_CLASS = "Background"
#: Real recordings only held-out clips lie over (dawn chorus: other birds loud and many); the
#: tests, the benchmarks and the demo train over the others.
HELD_OUT_RECORDINGS = frozenset(
    f"S4A03895_20190522_{t}.wav" for t in ("070000", "073000", "080000")
)


@dataclass(frozen=True)
class Call:
    """One synthetic call: its type and its box in the clip (seconds from its start, Hz)."""

    kind: str
    start_s: float
    end_s: float
    low_hz: float
    high_hz: float
    #: each element's box in the clip, where the call has several (``devtools.families``)
    elements: tuple[tuple[float, float, float, float], ...] = ()

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The whole call: (start_s, end_s, low_hz, high_hz)."""
        return (self.start_s, self.end_s, self.low_hz, self.high_hz)


@dataclass(frozen=True)
class Background:
    """A real recording decoded to mono float32 at :data:`SAMPLE_RATE`."""

    name: str
    samples: np.ndarray


@dataclass
class Clip:
    """A synthetic clip: ``samples`` (n,) float32 at ``sample_rate``, its species and calls."""

    species: str
    samples: np.ndarray
    calls: list[Call]
    background: str
    snr_db: float
    sample_rate: int = SAMPLE_RATE
    name: str = ""
    meta: dict = field(default_factory=dict)

    def wav(self) -> bytes:
        """The clip as a 16-bit PCM WAV file."""
        buf = io.BytesIO()
        sf.write(buf, self.samples, self.sample_rate, subtype="PCM_16", format="WAV")
        return buf.getvalue()


def backgrounds(paths: Sequence[str | Path]) -> list[Background]:
    """Decode real recordings (any format echocam decodes) to mono at :data:`SAMPLE_RATE`."""
    from echocam.signal import audio

    out = []
    for p in paths:
        decoded = audio.decode(
            Path(p).read_bytes(),
            sample_rate=SAMPLE_RATE,
            min_samples=2048,
            max_duration_s=3600.0,
            max_bytes=1 << 30,
        )
        out.append(Background(Path(p).name, decoded.samples))
    return out


def split_recordings(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(training backgrounds, held-out backgrounds) of ``paths``: whole recordings, never both;
    :data:`HELD_OUT_RECORDINGS` are held out."""
    return (
        [p for p in paths if p.name not in HELD_OUT_RECORDINGS],
        [p for p in paths if p.name in HELD_OUT_RECORDINGS],
    )


def _envelope(n: int, *, ramp: int) -> np.ndarray:
    """Flat top with raised-cosine ramps of ``ramp`` samples (no clicks: no broadband edges)."""
    env = np.ones(n, np.float64)
    ramp = min(ramp, n // 2)
    if ramp:
        r = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        env[:ramp], env[n - ramp :] = r, r[::-1]
    return env


def call_waveform(
    kind: str, *, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, float, float]:
    """One call of type ``kind``: (samples (n,) float64 peak 1, low_hz, high_hz).

    The frequency range is that of the instantaneous frequency.
    """
    sr = sample_rate
    if kind == "whistle":
        dur, f0 = rng.uniform(0.7, 1.3), rng.uniform(2000.0, 6000.0)
        depth, rate = rng.uniform(40.0, 120.0), rng.uniform(3.0, 6.0)
        t = np.arange(int(dur * sr)) / sr
        phase = 2 * np.pi * f0 * t - depth / rate * np.cos(2 * np.pi * rate * t)
        y = np.sin(phase) * _envelope(t.size, ramp=int(0.03 * sr))
        return y, f0 - depth, f0 + depth
    if kind == "upsweep":
        dur, f_lo = rng.uniform(0.2, 0.4), rng.uniform(1500.0, 3000.0)
        f_hi = f_lo * 2 ** rng.uniform(1.0, 1.6)
        t = np.arange(int(dur * sr)) / sr
        k = np.log(f_hi / f_lo) / dur  # exponential sweep: f(t) = f_lo e^{kt}
        phase = 2 * np.pi * f_lo * (np.exp(k * t) - 1) / k
        y = np.sin(phase) * _envelope(t.size, ramp=int(0.01 * sr))
        return y, f_lo, f_hi
    if kind == "trill":
        # a train of short pips each sweeping far down: a tall block of near-vertical ticks
        f_hi, rate, pulses = (
            rng.uniform(5500.0, 9500.0),
            rng.uniform(8.0, 12.0),
            rng.integers(6, 10),
        )
        f_lo = f_hi - rng.uniform(3000.0, 4500.0)
        pip, period = int(0.025 * sr), int(sr / rate)
        tp = np.arange(pip) / sr
        f = f_hi + (f_lo - f_hi) * tp / tp[-1]  # linear down-sweep within each pip
        shape = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.hanning(pip)
        y = np.zeros(period * (pulses - 1) + pip)
        for i in range(pulses):
            y[i * period : i * period + pip] += shape
        return y, f_lo, f_hi
    raise ValueError(f"unknown call type {kind!r}; known: {CALL_TYPES}")


def _voice(species: str | Species) -> tuple[str, str, Callable[[np.random.Generator], Sound]]:
    """(class name, kind of call, one call of it) of a trio name or a drawn family species."""
    if isinstance(species, Species):
        return species.name, species.family, species.call
    kind = SPECIES.get(species, "")

    def sound(rng: np.random.Generator) -> Sound:
        y, low, high = call_waveform(kind, rng=rng)
        return Sound(y, ((0.0, y.size / SAMPLE_RATE, float(low), float(high)),))

    return species, kind, sound


def _loudest_start(noise: np.ndarray, *, length: int, lo: int, hi: int) -> int:
    """The start in [lo, hi] of the ``length``-sample stretch of ``noise`` with the most energy
    above ~1 kHz (a first difference: wind and hum weigh little): where other birds call."""
    e = np.concatenate([[0.0], np.cumsum(np.diff(noise, prepend=noise[0]) ** 2)])
    starts = np.arange(lo, max(lo, hi) + 1)
    return int(starts[np.argmax(e[starts + length] - e[starts])])


def make_clip(
    *,
    species: str | Species,
    background: Background,
    rng: np.random.Generator,
    duration_s: float,
    snr_db: float,
    n_calls: int = 1,
    first_span_s: tuple[float, float] | None = None,
    overlap: bool = False,
) -> Clip:
    """A clip of ``duration_s`` seconds: ``n_calls`` calls of ``species`` over a real background
    (fewer where a long first call leaves the others no room).

    ``species`` is a name of :data:`SPECIES` or a :class:`devtools.families.Species`.  The
    background is a random stretch of ``background`` (looped if shorter).  Calls lie in the clip
    less 0.1 s at each end, at least 0.1 s apart; the first inside ``first_span_s`` when given,
    and with ``overlap`` where the background is loudest (over other birds' sounds).  The SNR
    is the RMS of the calls (over their own samples) over the RMS of the background stretch, in
    dB.  The mix is scaled to a peak of 0.9.
    """
    sr = SAMPLE_RATE
    n = int(round(duration_s * sr))
    bg = background.samples
    if bg.size < n:
        bg = np.tile(bg, -(-n // bg.size))
    off = int(rng.integers(0, bg.size - n + 1))
    noise = bg[off : off + n].astype(np.float64)
    name, kind, voice = _voice(species)
    if n_calls and not kind:
        raise ValueError(f"unknown species {species!r}; known: {list(SPECIES)}")
    signal = np.zeros(n)
    calls: list[Call] = []
    for k in range(n_calls):
        sound = voice(rng)
        y = sound.samples
        lo_s, hi_s = (0.1, duration_s - 0.1)
        if k == 0 and first_span_s is not None:
            lo_s, hi_s = first_span_s
        for _attempt in range(2000):
            start = rng.uniform(lo_s, hi_s - y.size / sr)
            if k == 0 and overlap:
                span = (int(lo_s * sr), int(hi_s * sr) - y.size)
                start = _loudest_start(noise, length=y.size, lo=span[0], hi=span[1]) / sr
            end = start + y.size / sr
            if all(end + 0.1 < c.start_s or start > c.end_s + 0.1 for c in calls):
                break
        else:
            if calls:  # the later calls are extras: a long first call may leave no room
                break
            raise ValueError(f"cannot place a call of {kind} in {duration_s} s")
        i = int(round(start * sr))
        signal[i : i + y.size] += y
        elements = tuple((i / sr + a, i / sr + b, lo, hi) for a, b, lo, hi in sound.elements)
        whole = sound.box
        calls.append(Call(kind, i / sr + whole[0], i / sr + whole[1], *whole[2:], elements))
    active = signal != 0
    mix = noise.copy()
    if calls:
        rms_call = np.sqrt(np.mean(signal[active] ** 2))
        rms_bg = np.sqrt(np.mean(noise**2)) or 1e-4
        mix += signal * (rms_bg / rms_call) * 10 ** (snr_db / 20)
    mix *= 0.9 / np.abs(mix).max()
    calls.sort(key=lambda c: c.start_s)
    return Clip(name, mix.astype(np.float32), calls, background.name, float(snr_db))


def write_species(
    root: str | Path,
    *,
    per_class: int,
    backgrounds: Sequence[Background],
    seed: int,
    duration_s: float = 6.0,
    n_calls: int = 2,
    window_s: float = 5.0,
    snr_db: tuple[float, float] = (0.0, 12.0),
    species: Sequence[str | Species] = tuple(SPECIES),
    prefix: str = "clip",
    noise_class: str | None = NOISE_CLASS,
    overlap_p: float = 0.0,
) -> list[Clip]:
    """Write ``root/<species>/<prefix>-<i>.wav`` and ``root/calls.csv`` (one row per call).

    ``noise_class`` (None: none) is a folder of as many clips with no call at all: a model
    must then find each species' own call, not tell a species by the absence of the others'
    (a class learned by exclusion has no evidence to point at).  Backgrounds are used in turn
    (:func:`background_index`: every class over every one),
    SNRs drawn uniformly from ``snr_db``.  For a clip longer than
    ``window_s`` the first call lies in the stretch every ``window_s`` crop holds, so any crop
    of a training window contains at least one whole call.  ``species`` are names of
    :data:`SPECIES` or drawn :class:`~devtools.families.Species`; with chance ``overlap_p`` a
    clip's first call lies over the loudest stretch of its background (other birds).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    clips: list[Clip] = []
    classes = [*species, *([noise_class] if noise_class else [])]
    for i in range(per_class):
        for k, s in enumerate(classes):
            bg = backgrounds[background_index(i, k, classes=len(classes), n=len(backgrounds))]
            span = None
            if duration_s > window_s:
                span = (duration_s - window_s + 0.05, window_s - 0.05)
            clip = make_clip(
                species=s,
                background=bg,
                rng=rng,
                duration_s=duration_s,
                snr_db=float(rng.uniform(*snr_db)),
                n_calls=n_calls if isinstance(s, Species) or s in SPECIES else 0,
                first_span_s=span,
                overlap=bool(overlap_p) and bool(rng.random() < overlap_p),
            )
            clip.name = f"{clip.species}/{prefix}-{i:04d}.wav"
            path = root / clip.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(clip.wav())
            clips.append(clip)
    write_calls_csv(root / "calls.csv", clips)
    return clips


def background_index(i: int, k: int, *, classes: int, n: int) -> int:
    """Which of ``n`` backgrounds clip ``i`` of class ``k`` (of ``classes``) lies over.

    Classes take the backgrounds in turn.  Where ``classes`` and ``n`` share a factor (6 classes
    over 3 held-out recordings) that turn alone would put every clip of a class over the same
    few recordings, so that a class's score is one recording's; each round of ``n / gcd`` clips
    then starts one background further, and every class meets every background.
    """
    g = math.gcd(classes, n)
    return (i * classes + k + (i // (n // g) if g > 1 else 0)) % n


def write_calls_csv(path: str | Path, clips: Sequence[Clip]) -> None:
    """One row per call: key, species, kind, start_s, end_s, low_hz, high_hz, elements (a JSON
    list of element boxes), background, snr_db."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "species", *Call.__dataclass_fields__, "background", "snr_db"])
        for clip in clips:
            for c in clip.calls:  # a noise clip has none
                row = asdict(c)
                row["elements"] = json.dumps([[round(v, 4) for v in e] for e in c.elements])
                w.writerow(
                    [clip.name, clip.species, *row.values(), clip.background, round(clip.snr_db, 2)]
                )
