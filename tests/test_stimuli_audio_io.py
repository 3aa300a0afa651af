"""load_audio's one set of rules: refuse what cannot be used, repair (with a notice) what can."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from common.errors import ModalflipError
from stimuli.audio_io import load_audio, write_wav


def _sine(seconds: float = 0.5, sr: int = 16000, hz: float = 220.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_write_then_load_round_trips_within_16_bit_quantisation(tmp_path):
    samples = _sine()
    path = write_wav(tmp_path / "a" / "clip.wav", samples)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    loaded = load_audio(path)
    assert loaded.dtype == np.float32 and loaded.shape == samples.shape
    assert np.max(np.abs(loaded - samples)) <= 1.0 / 32768 + 1e-6
    assert list(tmp_path.joinpath("a").iterdir()) == [path]  # no temporary file left behind


def test_wrong_rate_is_resampled_with_one_notice(tmp_path, capsys):
    path = tmp_path / "fast.wav"
    sf.write(str(path), _sine(sr=48000), 48000)
    loaded = load_audio(path)
    assert loaded.shape == (8000,)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "resampled 48000 Hz to 16000 Hz" in err[0] and "fast.wav" in err[0]


def test_stereo_is_downmixed_with_one_notice(tmp_path, capsys):
    path = tmp_path / "stereo.wav"
    left = _sine()
    sf.write(str(path), np.stack([left, left], axis=1), 16000)
    loaded = load_audio(path)
    assert loaded.ndim == 1 and np.allclose(loaded, left, atol=1e-4)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "downmixed 2 channels to mono" in err[0]


def test_a_clean_file_loads_without_notice(tmp_path, capsys):
    write_wav(tmp_path / "clean.wav", _sine())
    load_audio(tmp_path / "clean.wav")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("zero_bytes", "is empty"),
    ("no_frames", "is empty"),
    ("garbage", "cannot read audio file"),
    ("silent", "is silent"),
    ("constant", "holds no signal"),
    ("square", "holds no signal"),
])
def test_unusable_audio_is_refused_naming_the_file(tmp_path, kind, message):
    path = tmp_path / f"{kind}.wav"
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "no_frames":
        sf.write(str(path), np.zeros(0, dtype=np.float32), 16000)
    elif kind == "garbage":
        path.write_bytes(b"this is not a wav file at all" * 10)
    elif kind == "silent":
        sf.write(str(path), np.full(16000, 1e-5, dtype=np.float32), 16000, subtype="FLOAT")
    elif kind == "constant":
        sf.write(str(path), np.full(16000, 0.5, dtype=np.float32), 16000)
    elif kind == "square":
        sf.write(str(path), np.sign(_sine()) * 0.99, 16000)
    with pytest.raises(ModalflipError, match=message) as err:
        load_audio(path)
    assert f"{kind}.wav" in str(err.value)
