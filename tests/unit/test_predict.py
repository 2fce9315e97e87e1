"""How validation judges examples (``echocam.train.predict``): the windows of each."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf

from echocam.bucket.storage import LocalStore
from echocam.settings import Params
from echocam.train.labels import Example
from echocam.train.predict import BACKGROUND_WINDOWS, _windows
from tests.helpers import RECORDINGS, needs_shared

pytestmark = [needs_shared]


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
