"""The differentiable front end equals the HF Whisper feature extractor on real speech, and passes gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from common.errors import ModalflipError
from models.frontend import log_mel, window_counts
from stimuli import tts

RATE = 16000


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    """eSpeak clips of different lengths, emotions and languages (about 1.5 s to 4.5 s)."""
    return [tts.render("The train leaves at noon.", "en", "happy", "normal"),
            tts.render("I did not expect to see you here today, not at all.", "en", "sad", "strong"),
            tts.render("我们明天早上见。", "zh", "angry", "strong")]


def extractor(seconds: int = 30) -> WhisperFeatureExtractor:
    """Qwen2-Audio's extractor: 128 mel bins, n_fft 400, hop 160, 16 kHz, `seconds` per window."""
    return WhisperFeatureExtractor(feature_size=128, sampling_rate=RATE, hop_length=160, n_fft=400,
                                   chunk_length=seconds)


def reference(clips: list[np.ndarray], fe: WhisperFeatureExtractor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the processors ask the extractor for: padding to the window, with the attention mask."""
    out = fe(clips, sampling_rate=RATE, padding="max_length", return_attention_mask=True, return_tensors="pt")
    return out["input_features"], out["attention_mask"]


@pytest.mark.parametrize("seconds", [30, 6])
def test_features_match_the_hf_extractor_on_speech(speech, seconds):
    fe = extractor(seconds)
    features, mask = log_mel([torch.from_numpy(c) for c in speech], fe)
    expected, expected_mask = reference(speech, fe)
    assert features.shape == expected.shape == (3, 128, seconds * 100)
    assert (features - expected).abs().max() <= 1e-4
    assert torch.equal(mask, expected_mask.long())


def test_one_clip_matches_the_extractor_alone(speech):
    fe = extractor()
    features, mask = log_mel(torch.from_numpy(speech[0]), fe)
    expected, expected_mask = reference([speech[0]], fe)
    assert (features - expected).abs().max() <= 1e-4 and torch.equal(mask, expected_mask.long())


def test_two_dimensional_tensor_is_a_batch_of_equal_clips(speech):
    fe = extractor(6)
    n = min(len(c) for c in speech)
    batch = torch.stack([torch.from_numpy(c[:n]) for c in speech])
    features, mask = log_mel(batch, fe)
    one_by_one, one_mask = log_mel(list(batch), fe)
    assert torch.equal(features, one_by_one) and torch.equal(mask, one_mask)
    expected, _ = reference([c[:n] for c in speech], fe)
    assert (features - expected).abs().max() <= 1e-4
    assert int(mask[0].sum()) == n // 160 + (n % 160 > 0)


def test_gradient_reaches_the_waveform(speech):
    wave = torch.tensor(speech[1], requires_grad=True)
    features, mask = log_mel([wave], extractor(6))
    probe = torch.randn(features.shape, generator=torch.Generator().manual_seed(0))
    (features * probe * mask[:, None, :]).sum().backward()
    assert torch.isfinite(wave.grad).all()
    assert (wave.grad != 0).float().mean() > 0.5  # near-silent stretches sit under the max - 8 floor: no gradient


def test_clip_longer_than_the_window_is_an_error(speech):
    too_long = torch.zeros(6 * RATE + 1)
    with pytest.raises(ModalflipError, match=r"clip 1 lasts 6.00 s, longer than the model's 6 s audio window"):
        log_mel([torch.from_numpy(speech[0]), too_long], extractor(6))


def test_several_windows_match_the_extractor_on_each_window(speech):
    """Audio Flamingo 3's layout: consecutive windows, one row each, each padded and floored on its own."""
    fe = extractor(2)
    features, mask = log_mel([torch.from_numpy(c) for c in speech], fe, max_windows=3)
    windows = window_counts([len(c) for c in speech], 2 * RATE)
    chunks = [c[start:start + 2 * RATE] for c in speech for start in range(0, len(c), 2 * RATE)]
    expected, expected_mask = reference(chunks, fe)
    assert features.shape[0] == sum(windows) == len(chunks) and windows[1] == 3
    assert (features - expected).abs().max() <= 1e-4 and torch.equal(mask, expected_mask.long())
    with pytest.raises(ModalflipError, match=r"longer than the model's 4 s audio window \(2 windows of 2 s\)"):
        log_mel([torch.from_numpy(c) for c in speech], fe, max_windows=2)


def test_dither_is_refused():
    fe = extractor(6)
    fe.dither = 1e-5
    with pytest.raises(ModalflipError, match="dither"):
        log_mel(torch.zeros(RATE), fe)
