import os
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from echocam.settings import Params
from echocam.signal.audio import decode
from echocam.signal.spectrogram import MelSpectrogramDB
from echocam.signal.windows import frame, window_starts
from tests.helpers import needs_recording, recording, recordings

P = Params()


@pytest.fixture(scope="module", params=["cpu kernel", "torch.stft kernel"])
def mel(request):
    """Both kernels, on the CPU: the CPU's own and the one GPUs run (``torch.stft``)."""
    m = MelSpectrogramDB.from_params(P)
    m.host_kernel = request.param == "cpu kernel"
    return m


def reference(y: np.ndarray) -> np.ndarray:
    """The notebook's spectrogram (librosa 0.11 defaults + its parameters)."""
    s = librosa.feature.melspectrogram(
        y=y,
        sr=P.sample_rate,
        n_fft=P.n_fft,
        hop_length=P.hop_length,
        n_mels=P.n_mels,
        fmin=P.fmin,
        fmax=P.fmax,
    )
    return librosa.power_to_db(s, ref=np.max, top_db=P.top_db)


@pytest.mark.parametrize("path", recordings(), ids=lambda p: p.name)  # samples/ without ../shared
def test_matches_librosa_within_0_05_db_on_real_recordings(path, mel):
    y = decode(
        path.read_bytes(),
        sample_rate=P.sample_rate,
        min_samples=P.n_fft,
        max_duration_s=600,
        max_bytes=10**9,
    ).samples
    window = 5 * P.sample_rate
    wins = frame(y, window_starts(len(y), window=window, hop=window), window)
    ours = mel(torch.from_numpy(np.ascontiguousarray(wins))).numpy()
    for w, got in zip(wins, ours, strict=True):
        ref = reference(w)
        assert got.shape == ref.shape == (P.n_mels, 1 + window // P.hop_length)
        assert np.abs(got - ref).max() <= 0.05


def test_short_clip_matches_librosa(mel):
    """A notebook-length clip (1.5 s) is one window of its own length."""
    rng = np.random.default_rng(3)
    y = (rng.standard_normal(int(1.5 * P.sample_rate)) * 0.1).astype(np.float32)
    got = mel(torch.from_numpy(y)[None])[0].numpy()
    assert np.abs(got - reference(y)).max() <= 0.05


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=needs_recording(n))
        for n in ("spinetail_44k.wav", "XC563936_soundscape_48k.mp3")
    ],
)
@pytest.mark.slow
def test_front_end_from_the_file_matches_librosa(name, species_checkpoint):
    """The whole front end from the file: the pipeline's ``spectrogram_db`` (cam.npz) against the
    notebook's ``librosa.load`` → ``melspectrogram`` → ``power_to_db`` on the same windows."""
    from echocam import explain_file

    path = recording(name)
    outputs = ("cam", "db")  # the dB as stored: float16, read back
    ex = explain_file(path, weights=str(species_checkpoint), device="cpu", outputs=outputs)
    y, _ = librosa.load(path, sr=P.sample_rate, res_type="soxr_hq", mono=True)
    window = 5 * P.sample_rate
    starts = window_starts(len(y), window=window, hop=window)
    np.testing.assert_array_equal(ex.arrays["window_starts_s"], starts / P.sample_rate)
    got = ex.arrays["spectrogram_db"]
    assert got.dtype == np.float16
    assert got.shape == (len(starts), P.n_mels, 1 + window // P.hop_length)
    for start, db in zip(starts, got, strict=True):
        assert np.abs(db - reference(y[start : start + window])).max() <= 0.05


def test_the_two_kernels_agree_on_a_batch_of_real_windows():
    """The CPU kernel (slices of frames, banded mel product) and ``torch.stft`` with the dense
    product give the same dB to float rounding, short windows and a partial last slice too."""
    y = decode(recordings()[0].read_bytes(), **P.decode_options()).samples
    for length in (5 * P.sample_rate, P.n_fft + 1, 3 * 128 * P.hop_length + 7):
        waves = torch.from_numpy(
            np.ascontiguousarray(frame(y, np.array([0, len(y) - length]), length))
        )
        m = MelSpectrogramDB.from_params(P)
        host = m(waves)
        m.host_kernel = False
        dense = m(waves)
        assert host.shape == dense.shape == (2, P.n_mels, 1 + length // P.hop_length)
        assert (host - dense).abs().max() <= 0.01  # dB; librosa parity allows 0.05


@pytest.mark.parametrize(
    "sr, n_fft, n_mels, fmin, fmax",
    [
        (22050, 2048, 260, 0.0, 13000.0),  # the defaults: fmax above Nyquist, empty top bands
        (22050, 2048, 128, 0.0, 11025.0),
        (16000, 512, 40, 50.0, 7000.0),
        (44100, 4096, 96, 1500.0, 20000.0),  # log part only
        (22050, 1024, 64, 0.0, 800.0),  # linear part only
    ],
)
def test_melscale_is_librosas_filterbank_and_band_edges_bit_for_bit(sr, n_fft, n_mels, fmin, fmax):
    import warnings

    from echocam.signal import melscale

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Empty filters detected")
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    ours = melscale.filterbank(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.dtype == ref.dtype == np.float32 and ours.any()
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(
        melscale.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax),
        librosa.mel_frequencies(n_mels=n_mels + 2, fmin=fmin, fmax=fmax),
    )


@pytest.mark.slow
def test_explaining_never_imports_librosa(tmp_path):
    """librosa brings numba and scipy.signal (~100 MB per process) for two tables we compute."""

    code = (
        "import sys, numpy as np\n"
        "from echocam.explain.model import load_model\n"
        "from echocam.explain.pipeline import Explainer, Source\n"
        "from echocam.settings import Params\n"
        "import io, soundfile as sf\n"
        "buf = io.BytesIO(); sf.write(buf, np.random.default_rng(0).standard_normal(44100) * 0.1,"
        " 44100, format='WAV')\n"
        "ex = Explainer(load_model('random'), Params(), device='cpu')\n"
        "(r,) = ex.explain([Source('a.wav', buf.getvalue())])\n"
        "assert r.record['status'] == 'ok', r.record\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('librosa', 'numba')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert out.stdout.strip() == "[]", out.stdout
