"""Importers read labels from corpus file names; emotions outside the label set are skipped and counted."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from common.cli import run_main
from common.errors import ModalflipError
from stimuli.__main__ import main
from stimuli.importers import CREMAD_SENTENCES, import_cremad, import_esd, import_ravdess
from stimuli.manifest import read_manifest


def _tree(root, names, sr=16000):
    tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(sr // 20) / sr)).astype(np.float32)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), tone, sr)
    return root


def test_ravdess_names_give_emotion_intensity_and_statement(tmp_path):
    root = _tree(tmp_path, [
        "Actor_12/03-01-06-02-02-01-12.wav",  # fearful, strong, "Dogs ..."
        "Actor_12/03-01-01-01-01-01-12.wav",  # neutral
        "Actor_12/03-01-02-01-01-01-12.wav",  # calm
        "Actor_12/03-01-07-02-01-01-12.wav",  # disgust
        "Actor_12/03-01-08-01-01-02-12.wav",  # surprised
        "Actor_12/03-02-03-01-01-01-12.wav",  # song
        "Actor_12/notes.wav",
    ], sr=48000)
    clips, skipped = import_ravdess(root)
    assert skipped == {"calm": 1, "disgust": 1, "song": 1, "surprised": 1, "unrecognised name": 1}
    by_id = {clip.id: clip for clip in clips}
    fearful = by_id["ravdess-03-01-06-02-02-01-12"]
    assert (fearful.emotion, fearful.intensity, fearful.lang, fearful.sentence) == \
        ("fearful", "strong", "en", "Dogs are sitting by the door")
    assert by_id["ravdess-03-01-01-01-01-01-12"].emotion == "neutral"
    assert all(clip.audio_path.is_absolute() for clip in clips)


def test_cremad_levels_map_lo_md_xx_to_normal_and_hi_to_strong(tmp_path):
    root = _tree(tmp_path / "AudioWAV", [
        "1001_DFA_ANG_XX.wav", "1001_IEO_HAP_LO.wav", "1001_IEO_SAD_MD.wav", "1001_IEO_FEA_HI.wav",
        "1002_TSI_NEU_XX.wav", "1001_DFA_DIS_XX.wav", "1001_XYZ_ANG_XX.wav",
    ])
    clips, skipped = import_cremad(root)
    assert skipped == {"disgust": 1, "unrecognised name": 1}
    got = {clip.id: (clip.emotion, clip.intensity) for clip in clips}
    assert got == {"cremad-1001_DFA_ANG_XX": ("angry", "normal"), "cremad-1001_IEO_HAP_LO": ("happy", "normal"),
                   "cremad-1001_IEO_SAD_MD": ("sad", "normal"), "cremad-1001_IEO_FEA_HI": ("fearful", "strong"),
                   "cremad-1002_TSI_NEU_XX": ("neutral", "normal")}
    assert {c.id: c.sentence for c in clips}["cremad-1001_DFA_ANG_XX"] == "Don't forget a jacket"
    assert len(CREMAD_SENTENCES) == 12


def test_esd_speakers_decide_the_language_and_surprise_is_skipped(tmp_path):
    root = _tree(tmp_path, [
        "0001/Angry/train/0001_000351.wav", "0001/Sad/test/0001_001401.wav",
        "0011/Happy/evaluation/0011_000721.wav", "0011/Neutral/0011_000001.wav",
        "0011/Surprise/train/0011_001751.wav", "0021/Angry/train/0021_000351.wav",
    ])
    (root / "0011" / "0011.txt").write_text("0011_000001\tAuthor of the danger trail.\tNeutral\n", encoding="utf-8")
    (root / "0001" / "0001.txt").write_bytes("0001_000351\t打远一看，它们的确很是美丽，\t生气\n".encode("gb18030"))
    clips, skipped = import_esd(root)
    assert skipped == {"surprise": 1, "unknown speaker": 1}
    got = {clip.id: (clip.emotion, clip.intensity, clip.lang) for clip in clips}
    assert got == {"esd-0001_000351": ("angry", "normal", "zh"), "esd-0001_001401": ("sad", "normal", "zh"),
                   "esd-0011_000721": ("happy", "normal", "en"), "esd-0011_000001": ("neutral", "normal", "en")}
    sentences = {clip.id: clip.sentence for clip in clips}
    assert sentences["esd-0011_000001"] == "Author of the danger trail."
    assert sentences["esd-0001_000351"] == "打远一看，它们的确很是美丽，"


def test_a_folder_with_no_usable_clips_is_a_user_error(tmp_path):
    _tree(tmp_path, ["Actor_01/03-01-02-01-01-01-01.wav"])
    with pytest.raises(ModalflipError, match="no usable RAVDESS clips.*calm"):
        import_ravdess(tmp_path)


def test_a_corpus_present_twice_is_refused_rather_than_given_duplicate_ids(tmp_path):
    _tree(tmp_path, ["copy1/1001_DFA_ANG_XX.wav", "copy2/1001_DFA_ANG_XX.wav"])
    with pytest.raises(ModalflipError, match="appears twice"):
        import_cremad(tmp_path)


def test_import_command_writes_a_readable_manifest_and_prints_counts(tmp_path, capsys):
    root = _tree(tmp_path / "crema", ["1001_DFA_ANG_HI.wav", "1001_DFA_DIS_XX.wav"])
    assert run_main(main, ["import", "cremad", str(root), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "angry" in out and "skipped: disgust" in out
    [clip] = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert (clip.emotion, clip.intensity, clip.source) == ("angry", "strong", "cremad")
    row = json.loads((tmp_path / "out" / "manifest.jsonl").read_text())
    assert row["path"] == str((root / "1001_DFA_ANG_HI.wav").resolve())
