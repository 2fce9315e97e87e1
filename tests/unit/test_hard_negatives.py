"""Hard negatives: a background-class window of a --background recording is the loudest of
``Augment.hard_negatives`` random ones, so other birds' calls are in that class more often."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf


def test_more_draws_put_the_recordings_loud_call_in_more_background_windows(tmp_path):
    from echocam.bucket.storage import LocalStore
    from echocam.settings import Params
    from echocam.train.config import Augment
    from echocam.train.dataset import Backgrounds, Loader
    from echocam.train.labels import Example

    params = Params()
    sr = params.sample_rate
    quiet = np.random.default_rng(0).normal(0, 0.001, 60 * sr)  # 60 s, one 0.5-s call at 30 s
    quiet[30 * sr : 30 * sr + sr // 2] += 0.5 * np.sin(2 * np.pi * 3000 * np.arange(sr // 2) / sr)
    (tmp_path / "bg").mkdir()
    sf.write(tmp_path / "bg" / "chorus.wav", quiet, sr)
    store = LocalStore(tmp_path / "bg")
    examples = [Example("chorus.wav", 0, background=True)]

    def with_call(draws: int) -> int:
        only_crops = Augment(background_p=0.0, gain_db=(0.0, 0.0), mask_p=0.0, hard_negatives=draws)
        with ThreadPoolExecutor(2) as pool:
            loader = Loader(
                store, examples, params=params, augment=only_crops, pool=pool, batch_size=8,
                backgrounds=Backgrounds(store, params=params, extensions=(".wav",)),
            )  # fmt: skip
            windows = [w for batch in loader.epoch([0] * 120, epoch=1) for w in batch]
        assert len(windows) == 120
        return sum(int(np.abs(w.samples).max() > 0.1) for w in windows)

    # a 5-s window holds the call 5.5 s / 55 s of the time (~12 of 120; 15 seen), the
    # loudest of eight 1 - 0.9^8 of it (~68; 73 seen)
    one, eight = with_call(1), with_call(8)
    assert one < 30
    assert eight > 2.5 * max(one, 12)
