"""Call families: species whose calls nobody here designed a method for.

A *family* is a kind of call shape; a *species* is drawn from a family at random (its own
frequencies, durations, element count, rates) and each of its calls varies around those.  The
recipe, the call box and their tests are tuned on :data:`TUNED` families and reported on
:data:`HELD_OUT` ones (leave-families-out), so a method cannot be fitted to the shapes it is
judged on.  Every call's truth is the box of the *whole call* (all of its elements), with each
element's box beside it.

Families (frequencies are instantaneous, between 1 and 10 kHz, under the 11,025 Hz Nyquist of
the default analysis rate):

==============  ===========================================================================
``tonal``        one element, a held pitch with a slight vibrato, 0.15-0.9 s
``upsweep``      one rising sweep (linear or exponential), 0.1-0.5 s, 0.4-1.6 octaves
``downsweep``    one falling sweep, as ``upsweep`` mirrored
``harmonic``     a stack of 3-5 harmonics of a 0.6-2 kHz fundamental that glides a little
``sweep_series`` 2-6 alike sweeps with gaps of 0.03-0.3 s (a repeated syllable)
``note_series``  2-6 tonal notes with gaps of 0.03-0.3 s, at pitches up to 1.5 octaves apart
``am_trill``     a narrow-band tone amplitude-modulated at 15-60 Hz, 0.4-1.5 s
``pulse_trill``  6-14 short pips each sweeping down 2-4.5 kHz, at 8-20 pips a second
``chips``        1-4 broadband chips (band-limited noise, 5-25 ms, 2-5 kHz wide)
==============  ===========================================================================

    rng = np.random.default_rng(0)
    species = draw_species(HELD_OUT, rng=rng)       # one species per family
    sound = species[0].call(rng)                    # a Sound: samples and element boxes
    sound.box                                       # the whole call (0 s = its first sample)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 22050

#: families the recipe and the call box were tuned on...
TUNED = ("tonal", "upsweep", "sweep_series", "pulse_trill")
#: ...and those held out of that tuning, on which they are reported
HELD_OUT = ("downsweep", "harmonic", "note_series", "am_trill", "chips")
FAMILIES = TUNED + HELD_OUT
#: the multi-element families, on which the call box's joining is measured
MULTI_ELEMENT = ("sweep_series", "note_series", "pulse_trill", "chips")

#: the longest call, s: two calls and their gaps fit in a 5-s window
MAX_CALL_S = 2.0

Box = tuple[float, float, float, float]  # (start_s, end_s, low_hz, high_hz)


@dataclass(frozen=True)
class Sound:
    """One call: ``samples`` (n,) float64 with peak 1 and its ``elements``' boxes (seconds from
    the call's first sample, Hz)."""

    samples: np.ndarray
    elements: tuple[Box, ...]

    @property
    def box(self) -> Box:
        """The whole call: the box of all its elements."""
        e = np.array(self.elements)
        return tuple(float(v) for v in (e[:, 0].min(), e[:, 1].max(), e[:, 2].min(), e[:, 3].max()))


@dataclass(frozen=True)
class Species:
    """A species drawn from ``family``: its ``traits`` (the family's parameters, fixed for the
    species) and a ``name`` (a class name)."""

    name: str
    family: str
    traits: dict

    def call(self, rng: np.random.Generator, *, sample_rate: int = SAMPLE_RATE) -> Sound:
        """One call: the species' traits, each varied a little (pitch ±6 %, lengths ±15 %)."""
        return _CALLS[self.family](self.traits, rng, sample_rate)


def draw_species(
    families: Sequence[str], *, rng: np.random.Generator, per_family: int = 1
) -> list[Species]:
    """``per_family`` species of each family, named ``<family>-<k>``; species of one family
    differ in their drawn traits (pitch, lengths, counts)."""
    out = []
    for fam in families:
        if fam not in _TRAITS:
            raise ValueError(f"unknown family {fam!r}; known: {', '.join(FAMILIES)}")
        for k in range(per_family):
            out.append(Species(f"{fam}-{k + 1}", fam, _TRAITS[fam](rng)))
    return out


# -- the elements every family is made of ---------------------------------------------------


def _ramp(n: int, sr: int, seconds: float) -> np.ndarray:
    """Flat top with raised-cosine ramps (no clicks, so no broadband edges)."""
    env = np.ones(n)
    r = min(int(seconds * sr), n // 2)
    if r:
        edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
        env[:r], env[n - r :] = edge, edge[::-1]
    return env


def _tone(freq: np.ndarray, sr: int) -> np.ndarray:
    """A sinusoid following the instantaneous frequency ``freq`` (n,) Hz."""
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _sweep(f0: float, f1: float, dur: float, sr: int, *, exponential: bool) -> np.ndarray:
    """Instantaneous frequency (n,) from ``f0`` to ``f1`` Hz over ``dur`` s."""
    u = np.linspace(0.0, 1.0, max(2, int(dur * sr)))
    return f0 * (f1 / f0) ** u if exponential else f0 + (f1 - f0) * u


def _vary(x: float, rng: np.random.Generator, rel: float) -> float:
    return float(x * rng.uniform(1 - rel, 1 + rel))


def _sequence(parts: list[tuple[np.ndarray, float, float]], gaps: list[float], sr: int) -> Sound:
    """Elements (samples, low_hz, high_hz) laid out with ``gaps`` (s) between them."""
    total = sum(p[0].size for p in parts) + sum(int(g * sr) for g in gaps)
    y = np.zeros(total)
    elements, i = [], 0
    for k, (s, lo, hi) in enumerate(parts):
        y[i : i + s.size] += s
        elements.append((i / sr, (i + s.size) / sr, float(lo), float(hi)))
        i += s.size + (int(gaps[k] * sr) if k < len(gaps) else 0)
    return Sound(y / (np.abs(y).max() or 1.0), tuple(elements))


def _bandwidth(freq: np.ndarray, pad: float = 0.0) -> tuple[float, float]:
    return float(freq.min()) - pad, float(freq.max()) + pad


# -- families: traits drawn once per species, calls drawn around them -------------------------


def _tonal_traits(rng):
    return dict(f=rng.uniform(1500, 8000), dur=rng.uniform(0.15, 0.9), depth=rng.uniform(0, 0.02))


def _tonal(t, rng, sr):
    f, dur = _vary(t["f"], rng, 0.06), _vary(t["dur"], rng, 0.15)
    n = int(dur * sr)
    vib = 1 + t["depth"] * np.sin(2 * np.pi * rng.uniform(4, 8) * np.arange(n) / sr)
    freq = f * vib
    return _sequence([(_tone(freq, sr) * _ramp(n, sr, 0.02), *_bandwidth(freq))], [], sr)


def _sweep_traits(rng, *, up: bool):
    lo = rng.uniform(1200, 4000)
    hi = min(lo * 2 ** rng.uniform(0.4, 1.6), 9500.0)
    f0, f1 = (lo, hi) if up else (hi, lo)
    return dict(f0=f0, f1=f1, dur=rng.uniform(0.1, 0.5), exp=bool(rng.integers(2)))


def _one_sweep(t, rng, sr):
    k = rng.uniform(0.94, 1.06)
    freq = _sweep(t["f0"] * k, t["f1"] * k, _vary(t["dur"], rng, 0.15), sr, exponential=t["exp"])
    return _tone(freq, sr) * _ramp(freq.size, sr, 0.01), *_bandwidth(freq)


def _sweep_call(t, rng, sr):
    return _sequence([_one_sweep(t, rng, sr)], [], sr)


def _harmonic_traits(rng):
    return dict(
        f0=rng.uniform(600, 2000),
        harmonics=int(rng.integers(3, 6)),
        glide=rng.uniform(-0.25, 0.25),  # relative change of the fundamental over the call
        dur=rng.uniform(0.2, 0.8),
        tilt=rng.uniform(0.3, 0.8),  # amplitude ratio of each harmonic to the one below
    )


def _harmonic(t, rng, sr):
    f0, dur = _vary(t["f0"], rng, 0.06), _vary(t["dur"], rng, 0.15)
    fund = _sweep(f0, f0 * (1 + t["glide"]), dur, sr, exponential=False)
    top = int(min(t["harmonics"], 9500 // fund.max()))  # every harmonic under 9.5 kHz
    y = sum(t["tilt"] ** (h - 1) * _tone(h * fund, sr) for h in range(1, top + 1))
    low, high = float(fund.min()), float(top * fund.max())
    return _sequence([(y * _ramp(fund.size, sr, 0.02), low, high)], [], sr)


def _series_traits(rng, *, notes: bool):
    d = dict(
        count=int(rng.integers(2, 7)),
        gap=rng.uniform(0.03, 0.3),
        dur=rng.uniform(0.04, 0.2) if notes else rng.uniform(0.04, 0.15),
    )
    if notes:  # each note its own pitch within 1.5 octaves: a contour of jumps, every call's
        d["pitches"] = list(rng.uniform(1500, 4000) * 2 ** rng.uniform(0, 1.5, size=6))
    else:
        lo = rng.uniform(1500, 4500)
        hi = min(lo * 2 ** rng.uniform(0.5, 1.3), 9500.0)
        up = bool(rng.integers(2))
        d.update(f0=lo if up else hi, f1=hi if up else lo, exp=bool(rng.integers(2)))
    return d


def _series(t, rng, sr):
    count = int(np.clip(t["count"] + rng.integers(-1, 2), 2, 6))
    gaps = [_vary(t["gap"], rng, 0.15) for _ in range(count - 1)]
    parts = []
    for k in range(count):
        if "pitches" in t:
            f = _vary(t["pitches"][k], rng, 0.04)
            n = int(_vary(t["dur"], rng, 0.15) * sr)
            parts.append((_tone(np.full(n, f), sr) * _ramp(n, sr, 0.008), f, f))
        else:
            parts.append(_one_sweep({**t, "dur": t["dur"]}, rng, sr))
    return _sequence(_within(parts, gaps, sr), gaps, sr)


def _within(parts: list, gaps: list[float], sr: int, seconds: float = MAX_CALL_S) -> list:
    """The first elements of a call that fit in ``seconds`` (at least two)."""

    def length(k: int) -> float:
        return sum(p[0].size for p in parts[:k]) / sr + sum(gaps[: k - 1])

    k = len(parts)
    while k > 2 and length(k) > seconds:
        k -= 1
    return parts[:k]
    return parts


def _am_trill_traits(rng):
    return dict(f=rng.uniform(2500, 8500), rate=rng.uniform(15, 60), dur=rng.uniform(0.4, 1.5))


def _am_trill(t, rng, sr):
    f, dur = _vary(t["f"], rng, 0.06), _vary(t["dur"], rng, 0.15)
    n = int(dur * sr)
    am = 0.5 - 0.5 * np.cos(2 * np.pi * _vary(t["rate"], rng, 0.08) * np.arange(n) / sr)
    y = _tone(np.full(n, f), sr) * am * _ramp(n, sr, 0.02)
    # the modulation's sidebands lie at f ± rate: the band the call occupies
    return _sequence([(y, f - t["rate"], f + t["rate"])], [], sr)


def _pulse_trill_traits(rng):
    hi = rng.uniform(5000, 9500)
    return dict(
        hi=hi,
        lo=hi - rng.uniform(2000, 4500),
        rate=rng.uniform(8, 20),
        pulses=int(rng.integers(6, 15)),
        pip=rng.uniform(0.015, 0.035),
    )


def _pulse_trill(t, rng, sr):
    k = rng.uniform(0.95, 1.05)
    pulses = int(max(3, t["pulses"] + rng.integers(-2, 3)))
    period = 1.0 / _vary(t["rate"], rng, 0.08)
    freq = _sweep(t["hi"] * k, max(t["lo"] * k, 800.0), t["pip"], sr, exponential=False)
    pip = _tone(freq, sr) * np.hanning(freq.size)
    lo, hi = _bandwidth(freq)
    gap = max(period - t["pip"], 0.005)
    gaps = [gap] * (pulses - 1)
    return _sequence(_within([(pip, lo, hi)] * pulses, gaps, sr), gaps, sr)


def _chips_traits(rng):
    centre = rng.uniform(3500, 7500)
    return dict(
        centre=centre,
        width=rng.uniform(2000, 5000),
        count=int(rng.integers(1, 5)),
        dur=rng.uniform(0.005, 0.025),
        gap=rng.uniform(0.05, 0.2),
    )


def _chips(t, rng, sr):
    count = int(np.clip(t["count"] + rng.integers(-1, 2), 1, 4))
    centre = _vary(t["centre"], rng, 0.05)
    lo, hi = max(centre - t["width"] / 2, 500.0), min(centre + t["width"] / 2, 10000.0)
    parts = []
    for _ in range(count):
        n = max(int(_vary(t["dur"], rng, 0.2) * sr), 32)
        # noise with every frequency outside the band removed: a skirtless band, so the chip's
        # visible extent is its box
        spectrum = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / sr)
        spectrum[(f < lo) | (f > hi)] = 0
        parts.append((np.fft.irfft(spectrum, n) * np.hanning(n), lo, hi))
    return _sequence(parts, [_vary(t["gap"], rng, 0.15) for _ in range(count - 1)], sr)


_TRAITS = {
    "tonal": _tonal_traits,
    "upsweep": lambda rng: _sweep_traits(rng, up=True),
    "downsweep": lambda rng: _sweep_traits(rng, up=False),
    "harmonic": _harmonic_traits,
    "sweep_series": lambda rng: _series_traits(rng, notes=False),
    "note_series": lambda rng: _series_traits(rng, notes=True),
    "am_trill": _am_trill_traits,
    "pulse_trill": _pulse_trill_traits,
    "chips": _chips_traits,
}
_CALLS = {
    "tonal": _tonal,
    "upsweep": _sweep_call,
    "downsweep": _sweep_call,
    "harmonic": _harmonic,
    "sweep_series": _series,
    "note_series": _series,
    "am_trill": _am_trill,
    "pulse_trill": _pulse_trill,
    "chips": _chips,
}
