import numpy as np
import pytest

from echocam.errors import (
    EmptyInput,
    NonFinite,
    Silent,
    TooLarge,
    TooLong,
    TooShort,
    Undecodable,
)
from echocam.signal.audio import decode
from echocam.signal.windows import frame, window_starts
from tests.helpers import chirp, needs_recording, needs_shared, recording, recordings, wav_bytes

KW = dict(sample_rate=22050, min_samples=2048, max_duration_s=600.0, max_bytes=10**9)


@pytest.mark.parametrize("path", recordings(), ids=lambda p: p.name)
def test_decodes_every_shared_recording_to_the_target_rate(path):  # or samples/ without ../shared
    import soundfile as sf

    a = decode(path.read_bytes(), **KW)
    info = sf.info(str(path))
    assert a.sample_rate == 22050
    assert a.source_sample_rate == info.samplerate
    assert a.samples.dtype == np.float32 and a.samples.ndim == 1
    expected = int(np.ceil(info.frames * 22050 / info.samplerate))
    assert abs(a.samples.shape[0] - expected) <= 1  # soxr output length, fixed by librosa
    assert np.isfinite(a.samples).all() and np.abs(a.samples).max() > 0


# One file per resampling path: 44.1 kHz WAV, 48 kHz MP3, 22000 Hz WAV (a rate close to the target).
RESAMPLED = ["spinetail_44k.wav", "XC563936_soundscape_48k.mp3", "S4A03895_20190522_000000.wav"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_recording(n)) for n in RESAMPLED])
def test_resampled_signal_matches_librosa_load_from_the_file(name):
    """decode(bytes) is the notebook's ``librosa.load(path, sr=22050)``, sample for sample.

    librosa reads the file itself (soundfile from the path, its own mono mix, soxr_hq), so a wrong
    resampler, rate or mix shows.  Both read through libsndfile (MP3 too, with mpg123): the WAVs
    agree exactly; the MP3 within 1.2e-7, because mpg123's float output rounds differently after
    the boundary of each block read (decode streams the file in blocks, librosa reads it
    whole).  1e-5 leaves room for float rounding yet lies 20x below what a neighbouring
    resampler changes (soxr_vhq instead of soxr_hq: 2.4e-4 at most on the quietest of these files;
    soxr_mq 4.8e-4, polyphase 6.1e-4).
    """
    import librosa

    path = recording(name)
    ours = decode(path.read_bytes(), **KW)
    ref, sr = librosa.load(path, sr=22050, res_type="soxr_hq", mono=True)
    assert ours.source_sample_rate != 22050 and sr == 22050
    assert ours.samples.shape == ref.shape
    np.testing.assert_allclose(ours.samples, ref, rtol=0, atol=1e-5)


@needs_shared
def test_rates_and_containers_are_all_exercised():
    rates = {decode(p.read_bytes(), **KW).source_sample_rate for p in recordings()}
    assert rates == {22000, 44100, 48000}
    assert {p.suffix for p in recordings()} == {".wav", ".mp3"}


def test_stereo_is_mixed_to_mono_and_flac_ogg_decode():
    left = chirp(1.0, 22050)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    a = decode(wav_bytes(stereo, 22050), **KW)
    assert a.source_channels == 2
    np.testing.assert_allclose(a.samples, left / 2, atol=1e-4)
    for fmt, subtype in (("FLAC", "PCM_16"), ("OGG", "VORBIS")):
        b = decode(wav_bytes(left, 22050, fmt=fmt, subtype=subtype), **KW)
        assert b.source_format == fmt and abs(b.samples.shape[0] - left.shape[0]) < 2048


@pytest.mark.parametrize(
    "data, kw, error",
    [
        (b"", {}, EmptyInput),
        (np.random.default_rng(0).bytes(5000), {}, Undecodable),
        (b"this is a text file, not audio\n" * 20, {}, Undecodable),
        (wav_bytes(chirp(0.05, 22050), 22050), {}, TooShort),
        (wav_bytes(chirp(3.0, 8000), 8000), {"max_duration_s": 2.0}, TooLong),
        (wav_bytes(chirp(1.0, 8000), 8000), {"max_bytes": 1000}, TooLarge),
        (wav_bytes(np.zeros(22050, np.float32), 22050), {}, Silent),
        (
            wav_bytes(np.array([0.1, np.nan] * 11025, np.float32), 22050, subtype="FLOAT"),
            {},
            NonFinite,
        ),
        (
            wav_bytes(np.array([0.1, np.inf] * 11025, np.float64), 22050, subtype="DOUBLE"),
            {},
            NonFinite,
        ),
    ],
    ids=["empty", "random", "text", "short", "long", "large", "silent", "nan", "inf"],
)
def test_bad_input_raises_typed_errors_with_stable_codes(data, kw, error):
    with pytest.raises(error) as exc:
        decode(data, **{**KW, **kw})
    assert exc.value.code == error.code and exc.value.message


def test_window_starts_cover_the_recording():
    assert window_starts(100, window=100, hop=100).tolist() == [0]
    assert window_starts(300, window=100, hop=100).tolist() == [0, 100, 200]
    # trailing remainder: one more full window aligned to the end
    assert window_starts(350, window=100, hop=100).tolist() == [0, 100, 200, 250]
    assert window_starts(250, window=100, hop=50).tolist() == [0, 50, 100, 150]
    x = np.arange(350, dtype=np.float32)
    w = frame(x, window_starts(350, window=100, hop=100), 100)
    assert w.shape == (4, 100) and w[-1, -1] == 349


@pytest.mark.parametrize(
    "rate, channels, frames",
    [
        (44100, 1, 3 * 4096),  # a whole number of blocks: the stream is flushed by an empty read
        (44100, 2, 3 * 4096 + 17),
        (48000, 1, 5 * 4096 + 1),
        (8000, 1, 4096 - 3),  # one short block
        (22050, 2, 2 * 4096 + 5),  # no resampling: blocks copied as they are
    ],
)
def test_streamed_decode_equals_decoding_the_whole_file_at_once(
    monkeypatch, rate, channels, frames
):
    """Blocks through soxr.ResampleStream give librosa's one-shot soxr_hq output exactly.

    Small blocks (4096 frames) put many block boundaries into a short signal; the reference is
    the previous implementation: the whole file read at once, mixed, ``librosa.resample``.
    """
    import librosa

    import echocam.signal.audio

    rng = np.random.default_rng(frames)
    x = (0.3 * rng.standard_normal((frames, channels))).astype(np.float32)
    data = wav_bytes(x, rate, subtype="FLOAT")
    monkeypatch.setattr(echocam.signal.audio, "BLOCK_FRAMES", 4096)
    got = decode(data, **{**KW, "min_samples": 1})
    mono = x.mean(axis=1, dtype=np.float32)
    ref = (
        mono
        if rate == 22050
        else librosa.resample(mono, orig_sr=rate, target_sr=22050, res_type="soxr_hq")
    )
    assert got.samples.dtype == np.float32 and got.samples.shape == ref.shape
    np.testing.assert_array_equal(got.samples, ref)


def test_the_output_buffer_grows_or_is_trimmed_when_the_header_misjudged_the_length():
    """libsndfile's frame count may be an estimate (MP3): the buffer is sized by it, grown when
    the data holds more, copied to its length when it holds less, zero-padded to librosa's."""
    from echocam.signal.audio import _Growing

    blocks = [np.full(3, i + 1, np.float32) for i in range(5)]
    too_small, too_large = _Growing(4), _Growing(100_000)
    for b in blocks:
        too_small.extend(b)
        too_large.extend(b)
    want = np.concatenate([*blocks, np.zeros(2, np.float32)])
    for buf in (too_small, too_large):
        got = buf.result(17)
        np.testing.assert_array_equal(got, want)
        assert got.base is None  # a copy: the oversized buffer is not kept alive
