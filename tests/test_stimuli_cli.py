"""`python -m stimuli`: bad input is one stderr line and exit 2; repairs are one notice line; make writes the set."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stimuli.audio_io import load_audio
from stimuli.manifest import read_manifest
from stimuli.spec import SEED_DIR

REPO = Path(__file__).resolve().parents[1]


def _stimuli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "stimuli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _one_clip_manifest(folder: Path, samples: np.ndarray | None, sr: int = 16000, emotion: str = "happy") -> Path:
    audio = folder / "clip.wav"
    if samples is not None:
        sf.write(str(audio), samples, sr)
    row = {"id": "c1", "path": "clip.wav", "emotion": emotion, "intensity": "normal", "lang": "en",
           "sentence": "", "style": "", "source": "test"}
    manifest = folder / "manifest.jsonl"
    manifest.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return manifest


def _tone(sr: int = 16000, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * 150 * np.arange(sr // 2) / sr)).astype(np.float32)


@pytest.mark.parametrize("case, expected", [
    ("unknown emotion", "unknown emotion 'calm'"),
    ("missing file", "does not exist"),
    ("unreadable", "cannot read audio file"),
    ("empty", "is empty"),
    ("silent", "is silent"),
])
def test_bad_input_to_check_is_one_line_and_exit_2(tmp_path, case, expected):
    if case == "unknown emotion":
        manifest = _one_clip_manifest(tmp_path, _tone(), emotion="calm")
    elif case == "missing file":
        manifest = _one_clip_manifest(tmp_path, None)
    elif case == "unreadable":
        manifest = _one_clip_manifest(tmp_path, None)
        (tmp_path / "clip.wav").write_bytes(b"RIFF nonsense" * 20)
    elif case == "empty":
        manifest = _one_clip_manifest(tmp_path, np.zeros(0, dtype=np.float32))
    else:
        manifest = _one_clip_manifest(tmp_path, np.zeros(8000, dtype=np.float32))
    result = _stimuli("check", manifest)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert "clip.wav" in lines[0]
    assert result.stdout == ""  # nothing is reported before every clip has been read


@pytest.mark.parametrize("channels, sr, notice", [(2, 16000, "downmixed 2 channels to mono"),
                                                  (1, 48000, "resampled 48000 Hz to 16000 Hz")])
def test_repairable_audio_is_one_notice_line_and_checks(tmp_path, channels, sr, notice):
    tone = _tone(sr)
    manifest = _one_clip_manifest(tmp_path, np.stack([tone] * channels, axis=1), sr)
    result = _stimuli("check", manifest)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("notice: ") and notice in lines[0]
    assert "SKIP" in result.stdout


def test_bad_options_are_one_line_and_exit_2(tmp_path):
    for args in (["make", "--out", tmp_path, "--lang", "fr"], ["import", "ravdess", tmp_path / "nowhere", "--out",
                                                                 tmp_path], ["frobnicate"]):
        result = _stimuli(*args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, (args, result.stderr)
    assert not (tmp_path / "manifest.jsonl").exists()


def test_make_writes_18_clips_and_a_manifest_matching_the_committed_seed_set(tmp_path):
    result = _stimuli("make", "--out", tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    clips = read_manifest(tmp_path / "manifest.jsonl")
    assert [clip.id for clip in clips] == [f"A{i}-{lang}" for lang in ("en", "zh") for i in range(1, 10)]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.wav")) == \
        sorted(f"{clip.lang}/{clip.id}.wav" for clip in clips)
    committed = {clip.id: clip for clip in read_manifest(SEED_DIR / "manifest.jsonl")}
    for clip in clips:
        fresh, seed = load_audio(clip.audio_path), load_audio(committed[clip.id].audio_path)
        assert fresh.shape == seed.shape and np.max(np.abs(fresh - seed)) <= 2 / 32768, \
            f"{clip.id} differs from stimuli/seed: regenerate it with python -m stimuli make --out stimuli/seed"
        assert (clip.emotion, clip.intensity, clip.sentence, clip.style) == \
            (committed[clip.id].emotion, committed[clip.id].intensity, committed[clip.id].sentence,
             committed[clip.id].style)
