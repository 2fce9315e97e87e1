"""The call families of ``devtools.families``: every call's truth box holds its sound."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from devtools import families as F


def _energy_inside(sound: F.Sound, sr: int = F.SAMPLE_RATE) -> tuple[float, float]:
    """(fraction of the energy inside the elements' times, inside the whole box's band, widened
    by what the shortest element's length smears in frequency)."""
    y = sound.samples
    t = np.arange(y.size) / sr
    in_time = np.zeros(y.size, bool)
    for a, b, *_ in sound.elements:
        in_time |= (t >= a) & (t < b)
    power = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(y.size, 1 / sr)
    _, _, low, high = sound.box
    smear = max(100.0, 4 / min(b - a for a, b, *_ in sound.elements))
    in_band = (f >= low - smear) & (f <= high + smear)
    return float((y[in_time] ** 2).sum() / (y**2).sum()), float(power[in_band].sum() / power.sum())


@pytest.mark.parametrize("family", F.FAMILIES)
def test_every_call_lies_inside_its_boxes(family):
    rng = np.random.default_rng(7)
    for species in F.draw_species([family], rng=rng, per_family=4):
        for _ in range(5):
            sound = species.call(rng)
            start, end, low, high = sound.box
            assert start == 0 and end <= F.MAX_CALL_S + 1e-9
            assert 300 <= low < high <= 10_000  # under the 11,025 Hz Nyquist of 22,050 Hz
            assert np.abs(sound.samples).max() == pytest.approx(1.0)
            in_time, in_band = _energy_inside(sound)
            assert in_time > 0.999 and in_band > 0.95, (species, in_time, in_band)
            if family in ("sweep_series", "note_series", "pulse_trill"):
                assert len(sound.elements) >= 2
                gaps = [b[0] - a[1] for a, b in itertools.pairwise(sound.elements)]
                assert min(gaps) > 0


def test_species_differ_and_draws_repeat_by_seed():
    a = F.draw_species(F.FAMILIES, rng=np.random.default_rng(1), per_family=2)
    b = F.draw_species(F.FAMILIES, rng=np.random.default_rng(1), per_family=2)
    assert [s.traits for s in a] == [s.traits for s in b]
    assert len({s.name for s in a}) == 2 * len(F.FAMILIES)
    for first, second in zip(a[::2], a[1::2], strict=True):
        assert first.family == second.family and first.traits != second.traits
    assert set(F.TUNED).isdisjoint(F.HELD_OUT) and set(F.FAMILIES) == {s.family for s in a}
    with pytest.raises(ValueError, match="unknown family"):
        F.draw_species(["whistle"], rng=np.random.default_rng(0))


def test_note_series_jump_in_pitch_and_harmonics_stack():
    rng = np.random.default_rng(3)
    (notes, stack) = F.draw_species(["note_series", "harmonic"], rng=rng)
    sound = notes.call(rng)
    pitches = [lo for *_, lo, _hi in sound.elements]
    assert max(pitches) / min(pitches) > 1.1  # the notes are not one pitch
    _, _, low, high = stack.call(rng).box
    assert high / low >= 2.5  # at least three harmonics


@pytest.mark.parametrize(("classes", "n"), [(6, 3), (4, 2), (6, 4), (4, 3), (6, 11)])
def test_every_class_lies_over_every_background(classes, n):
    """Six classes over three held-out recordings once put each class over one recording, so a
    class's held-out score was that recording's; now each meets all of them, evenly."""
    from devtools.synthetic import background_index

    rounds = 4 * n
    for k in range(classes):
        used = [background_index(i, k, classes=classes, n=n) for i in range(rounds)]
        assert np.bincount(used, minlength=n).tolist() == [rounds // n] * n, (k, used)
    # clip i's classes still take different backgrounds where there are enough
    for i in range(rounds):
        row = {background_index(i, k, classes=classes, n=n) for k in range(classes)}
        assert len(row) == min(classes, n)
