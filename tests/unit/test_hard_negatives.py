"""Hard negatives: a background-class window of a --background recording is the loudest of
``Augment.hard_negatives`` random ones, so other birds' calls are in that class more often."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch


def one_call(tmp_path, *, seconds: int, sr: int, seed: int):
    """A folder holding ``chorus.wav``: ``seconds`` of faint noise, one loud 0.5-s call in the
    middle."""
    chorus = np.random.default_rng(seed).normal(0, 0.001, seconds * sr)
    mid = seconds * sr // 2
    chorus[mid : mid + sr // 2] += 0.5 * np.sin(2 * np.pi * 3000 * np.arange(sr // 2) / sr)
    (tmp_path / "bg").mkdir()
    sf.write(tmp_path / "bg" / "chorus.wav", chorus, sr)
    return tmp_path / "bg"


def test_more_draws_put_the_recordings_loud_call_in_more_background_windows(tmp_path):
    from echocam.bucket.storage import LocalStore
    from echocam.settings import Params
    from echocam.train.config import Augment
    from echocam.train.dataset import Backgrounds, Loader
    from echocam.train.labels import Example

    params = Params()
    store = LocalStore(one_call(tmp_path, seconds=60, sr=params.sample_rate, seed=0))
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


class _Median(torch.nn.Module):
    """A stand-in classifier of two classes whose second class's logit rises (``sign`` 1) or
    falls (-1) as the image's median pixel falls: a loud call squeezes the rest of its window
    dark in the per-window colour scaling, so a window holding the call is far from the median."""

    def __init__(self, sign: float):
        super().__init__()
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).median(dim=1).values
        return torch.stack([torch.zeros_like(m), -self.sign * 10 * m], dim=1)


def test_the_model_chooses_the_windows_it_takes_for_another_class(tmp_path):
    """``--hard-negatives-by model``: of four random windows, the one the network scores
    highest for a class not the example's own.  A network that takes the call for the other
    class gets it in most background windows; one that takes the rest for it, in none."""
    from echocam.bucket.storage import LocalStore
    from echocam.settings import Params
    from echocam.signal.frontend import FrontEnd
    from echocam.train.config import Augment
    from echocam.train.dataset import Backgrounds, Loader
    from echocam.train.labels import Example
    from echocam.train.mining import mine

    params = Params()
    store = LocalStore(one_call(tmp_path, seconds=30, sr=params.sample_rate, seed=1))
    crops = Augment(background_p=0.0, gain_db=(0.0, 0.0), mask_p=0.0, hard_negatives=4,
                    hard_negatives_by="model")  # fmt: skip
    fe = FrontEnd(params, torch.device("cpu"))
    order = [0] * 40

    def with_call(net: torch.nn.Module) -> int:
        with ThreadPoolExecutor(2) as pool:
            loader = Loader(
                store, [Example("chorus.wav", 0, background=True)], params=params,
                augment=crops, pool=pool, batch_size=8,
                backgrounds=Backgrounds(store, params=params, extensions=(".wav",)),
            )  # fmt: skip
            loader.starts = mine(net, fe, loader, order, epoch=1, batch_size=16)
            assert sorted(loader.starts) == list(range(len(order)))
            windows = [w for batch in loader.epoch(order, epoch=1) for w in batch]
        return sum(int(np.abs(w.samples).max() > 0.1) for w in windows)

    # a 5-s window holds the call 5.5 s / 25 s of the time (~9 of 40); the likeliest of four
    # holds it when any does (1 - 0.78^4: ~25), the least likely only when all four do (~0)
    calls, quiet = with_call(_Median(1.0)), with_call(_Median(-1.0))  # 22 and 0 seen
    assert calls >= 16
    assert quiet <= 2


def test_an_unknown_way_to_choose_hard_negatives_is_refused():
    from echocam.train.config import Augment

    with pytest.raises(ValueError, match="hard-negatives-by"):
        Augment(hard_negatives_by="random")
