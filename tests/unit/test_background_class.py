"""``--background-class`` examples (whole recordings of the ``--background`` source): judged on
a few windows by validation, and kept apart from the labelled source's recordings of their name."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf

from echocam.bucket.storage import LocalStore
from echocam.settings import Params
from echocam.train.config import Augment
from echocam.train.dataset import Backgrounds, Loader
from echocam.train.labels import Example
from echocam.train.predict import BACKGROUND_WINDOWS, _windows
from tests.helpers import RECORDINGS, needs_shared

pytestmark = [needs_shared]

NAME = "spinetail_44k.wav"


def test_a_long_background_recording_validates_on_a_few_windows(tmp_path):
    """A --background-class example is a whole recording: validation judges it on at most
    BACKGROUND_WINDOWS evenly spread windows, the first and the last among them; a labelled
    example of the same recording keeps every window."""
    params = Params()
    y, sr = sf.read(RECORDINGS / "S4A03895_20190522_060000.wav", dtype="float32")
    sf.write(tmp_path / "chorus.wav", np.tile(y, 12), sr)  # 2 minutes: 24 windows
    store = LocalStore(tmp_path)
    examples = [Example("chorus.wav", 0, background=True), Example("chorus.wav", 0)]
    with ThreadPoolExecutor(2) as pool:
        got = dict(_windows(store, examples, params=params, pool=pool, background=store))
    every = [start for start, _ in got[1]]
    few = [start for start, _ in got[0]]
    assert len(every) == 24 and len(few) == BACKGROUND_WINDOWS < len(every)
    assert set(few) <= set(every) and few[0] == every[0] and few[-1] == every[-1]
    assert np.all(np.diff(few) > 0)


def test_a_bad_background_recording_leaves_the_source_one_of_its_name(tmp_path):
    """The --background source may hold a key the labelled source also has: a failure of one is
    remembered under its own name (``background:KEY``), and the other is still drawn."""
    source, bg = tmp_path / "src", tmp_path / "bg"
    source.mkdir()
    bg.mkdir()
    shutil.copy(RECORDINGS / NAME, source / NAME)
    (bg / NAME).write_bytes(b"RIFF not really a wave file")
    examples = [Example(NAME, 0, background=True), Example(NAME, 1)]
    with ThreadPoolExecutor(1) as pool:
        loader = Loader(LocalStore(source), examples, params=Params(), augment=Augment.off(),
                        pool=pool, batch_size=1, prefetch=1,
                        backgrounds=Backgrounds(LocalStore(bg), params=Params(),
                                                extensions=(".wav",)))  # fmt: skip
        drawn = [w.example for e in (1, 2) for b in loader.epoch([0, 1], epoch=e) for w in b]
    assert set(loader.skipped) == {f"background:{NAME}"}
    assert drawn == [1, 1]  # the source's recording, both epochs


def test_validation_mixes_a_held_out_background_into_the_labelled_windows(tmp_path):
    """``Mix``: each labelled example's windows get a stretch of one of the mix's recordings at
    its SNR, the same stretch every time it is judged; the Background class's own windows and a
    mix whose recording fails to decode stay as they are."""
    from echocam.train.augment import rms
    from echocam.train.predict import Mix

    params = Params()
    for name in (NAME, "S4A03895_20190522_060000.wav"):
        shutil.copy(RECORDINGS / name, tmp_path / name)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    store = LocalStore(tmp_path)
    examples = [Example(NAME, 0), Example("S4A03895_20190522_060000.wav", 1, background=True)]

    def judged(mix):
        with ThreadPoolExecutor(2) as pool:
            return dict(_windows(store, examples, params=params, pool=pool, background=store,
                                 mix=mix))  # fmt: skip

    plain = judged(None)
    mix = Mix(["S4A03895_20190522_060000.wav"], snr_db=0.0)
    once, twice = judged(mix), judged(mix)
    for (s0, w0), (s1, w1), (s2, w2) in zip(plain[0], once[0], twice[0], strict=True):
        assert s0 == s1 == s2
        np.testing.assert_array_equal(w1, w2)
        added = w1 - w0
        assert abs(20 * np.log10(rms(w0) / rms(added)) - 0.0) < 0.1  # at the mix's SNR
    for (_, w0), (_, w1) in zip(plain[1], once[1], strict=True):
        np.testing.assert_array_equal(w0, w1)
    broken = judged(Mix(["broken.wav"], snr_db=0.0))
    for (_, w0), (_, w1) in zip(plain[0], broken[0], strict=True):
        np.testing.assert_array_equal(w0, w1)
