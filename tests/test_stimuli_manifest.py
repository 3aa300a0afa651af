"""Manifests: JSONL or CSV in, every row checked, errors that name the row and the file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import ModalflipError
from stimuli.audio_io import write_wav
from stimuli.manifest import Clip, read_manifest, stimulus_set_hash, write_manifest


def _clip_file(folder, name="a.wav"):
    t = np.arange(8000) / 16000
    return write_wav(folder / name, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))


def _row(**changes):
    row = {"id": "x1", "path": "a.wav", "emotion": "happy", "intensity": "strong", "lang": "en",
           "sentence": "Hello there.", "style": "bright", "source": "test"}
    row.update(changes)
    return row


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_jsonl_rows_become_clips_with_absolute_audio_paths(tmp_path):
    audio = _clip_file(tmp_path)
    clips = read_manifest(_jsonl(tmp_path / "manifest.jsonl", [_row()]))
    assert clips == [Clip(id="x1", path="a.wav", emotion="happy", intensity="strong", lang="en",
                          sentence="Hello there.", style="bright", source="test", audio_path=audio.resolve())]


def test_csv_with_language_column_and_defaults(tmp_path):
    (tmp_path / "audio").mkdir()
    _clip_file(tmp_path / "audio", "b.wav")
    manifest = tmp_path / "clips.csv"
    manifest.write_text("path,emotion,language\naudio/b.wav,Sad,zh\n", encoding="utf-8")
    [clip] = read_manifest(manifest)
    assert (clip.id, clip.emotion, clip.intensity, clip.lang) == ("b", "sad", "normal", "zh")


@pytest.mark.parametrize("changes, message", [
    ({"emotion": "calm"}, "unknown emotion 'calm'"),
    ({"path": "missing.wav"}, "missing.wav does not exist"),
    ({"intensity": "extreme"}, "intensity 'extreme'"),
    ({"lang": "fr"}, "language 'fr'"),
])
def test_a_bad_row_is_named_by_number_and_file(tmp_path, changes, message):
    _clip_file(tmp_path)
    manifest = _jsonl(tmp_path / "manifest.jsonl", [_row(), _row(id="x2", **changes)])
    with pytest.raises(ModalflipError, match=message) as err:
        read_manifest(manifest)
    assert "manifest.jsonl row 2" in str(err.value)


def test_all_bad_rows_are_counted_in_the_one_message(tmp_path):
    _clip_file(tmp_path)
    rows = [_row(id=f"x{i}", emotion="calm") for i in range(3)]
    with pytest.raises(ModalflipError, match=r"row 1: .*\(2 more rows have problems\)"):
        read_manifest(_jsonl(tmp_path / "manifest.jsonl", rows))


def test_duplicate_ids_are_refused(tmp_path):
    _clip_file(tmp_path)
    with pytest.raises(ModalflipError, match="row 2: id 'x1' already used in row 1"):
        read_manifest(_jsonl(tmp_path / "manifest.jsonl", [_row(), _row()]))


def test_write_manifest_keeps_inside_paths_relative_and_outside_paths_absolute(tmp_path):
    inside = _clip_file(tmp_path / "set" / "en", "in.wav")
    outside = _clip_file(tmp_path / "corpus", "out.wav")
    clips = [Clip(id=p.stem, path=str(p), emotion="angry", intensity="normal", lang="en", sentence="",
                  style="", source="test", audio_path=p) for p in (inside, outside)]
    manifest = write_manifest(tmp_path / "set" / "manifest.jsonl", clips)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [row["path"] for row in rows] == ["en/in.wav", str(outside.resolve())]
    assert [c.audio_path for c in read_manifest(manifest)] == [inside.resolve(), outside.resolve()]


def test_stimulus_hash_follows_the_audio_not_only_the_manifest(tmp_path):
    audio = _clip_file(tmp_path)
    manifest = _jsonl(tmp_path / "manifest.jsonl", [_row()])
    before = stimulus_set_hash(manifest)
    assert stimulus_set_hash(manifest) == before
    t = np.arange(8001) / 16000  # one sample more: the same manifest, other audio
    write_wav(audio, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    assert stimulus_set_hash(manifest) != before
    _clip_file(tmp_path)
    assert stimulus_set_hash(manifest) == before
