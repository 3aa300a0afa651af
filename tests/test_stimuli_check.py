"""The seed styles are audible in the acoustics: the orderings they imply hold on freshly rendered clips."""
from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from stimuli import tts
from stimuli.audio_io import write_wav
from stimuli.check import ORDERINGS, check_orderings, measure, pitch_track, run_check
from stimuli.manifest import Clip, write_manifest
from stimuli.spec import SEED_DIR, seed_sentence

STYLES = sorted({group for ordering in ORDERINGS for group in (ordering.higher, ordering.lower)})


@pytest.fixture(scope="module")
def fresh():
    """(lang, emotion, intensity) -> samples, rendered now for every style the orderings mention."""
    return {(lang, emotion, intensity): tts.render(seed_sentence(lang), lang, emotion, intensity)
            for lang in ("en", "zh") for emotion, intensity in STYLES}


@pytest.mark.parametrize("hz", [65.0, 110.0, 220.0, 440.0])
def test_pitch_tracker_recovers_the_frequency_of_a_tone(hz):
    t = np.arange(16000) / 16000
    f0 = pitch_track(0.5 * np.sin(2 * np.pi * hz * t))
    assert np.nanmedian(f0) == pytest.approx(hz, rel=0.01)
    assert np.mean(np.isfinite(f0)) > 0.9


def test_pitch_tracker_calls_noise_and_silence_unvoiced():
    noise = np.random.default_rng(0).standard_normal(16000) * 0.1
    assert np.mean(np.isfinite(pitch_track(noise))) < 0.05
    assert measure(np.zeros(16000)).voiced_fraction == 0.0


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_ordering_the_styles_imply_holds_on_fresh_clips(fresh, lang):
    measured = [(key, measure(samples)) for key, samples in fresh.items() if key[0] == lang]
    results = check_orderings(measured)
    assert len(results) == len(ORDERINGS)
    failed = [f"{r.ordering.describe()}: {r.higher_value:.2f} vs {r.lower_value:.2f}"
              for r in results if r.status != "PASS"]
    assert not failed


def test_check_reports_a_failed_ordering_as_status_1(fresh, tmp_path):
    """A sad clip labelled happy/strong breaks 'happy/strong F0 > neutral F0': a finding, exit status 1."""
    rows = [("neutral", "normal", fresh["en", "neutral", "normal"]), ("happy", "strong", fresh["en", "sad", "strong"])]
    clips = []
    for emotion, intensity, samples in rows:
        path = write_wav(tmp_path / f"{emotion}.wav", samples)
        clips.append(Clip(id=emotion, path=path.name, emotion=emotion, intensity=intensity, lang="en",
                          sentence=seed_sentence("en"), style="", source="test", audio_path=path))
    write_manifest(tmp_path / "manifest.jsonl", clips)
    console = Console(record=True, width=120)
    assert run_check(tmp_path, console) == 1
    text = console.export_text()
    assert "FAIL" in text and "SKIP" in text  # the orderings without clips are skipped, not failed


def test_committed_seed_set_passes_check():
    assert run_check(SEED_DIR / "manifest.jsonl", Console(record=True, width=120)) == 0
