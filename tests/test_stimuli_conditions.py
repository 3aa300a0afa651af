"""Items: per clip one audio_only, one conflict per other emotion, one consistent; instructions name T."""
from __future__ import annotations

from collections import Counter

import pytest

from common.errors import ModalflipError
from stimuli.conditions import build_items, seed_items
from stimuli.spec import emotions, label_words, seed_clips


@pytest.fixture(scope="module")
def items():
    return seed_items()


def test_each_seed_clip_has_one_audio_only_four_conflict_and_one_consistent_item(items):
    per_clip = Counter((item.clip_id, item.condition) for item in items)
    clip_ids = {item.clip_id for item in items}
    assert len(clip_ids) == 2 * len(seed_clips()) == 18
    for clip_id in clip_ids:
        assert (per_clip[clip_id, "audio_only"], per_clip[clip_id, "conflict"], per_clip[clip_id, "consistent"]) \
            == (1, len(emotions()) - 1, 1)
    assert len(items) == 18 * 6


def test_conflict_asserts_another_emotion_and_consistent_asserts_the_voices_own(items):
    for item in items:
        if item.condition == "conflict":
            assert item.text_emotion != item.audio_emotion
        elif item.condition == "consistent":
            assert item.text_emotion == item.audio_emotion
        else:
            assert item.text_emotion is None


def test_instruction_names_the_asserted_emotion_in_the_items_language(items):
    for item in items:
        if item.text_emotion is None:
            continue
        word = label_words(item.lang)[item.text_emotion]
        assert item.instruction.count(word) == 1  # asserted once; the templates list no answer words
        others = [w for e, w in label_words(item.lang).items() if e != item.text_emotion]
        assert not any(w in item.instruction for w in others)
        if item.lang == "zh":
            assert "Judge" not in item.instruction


def test_item_ids_name_clip_condition_and_asserted_emotion(items):
    ids = {item.item_id for item in items}
    assert len(ids) == len(items)
    assert {"A3-en/conflict/T=sad", "A3-en/consistent/T=happy", "A3-en/audio_only", "A7-zh/conflict/T=happy"} <= ids


def test_voice_condition_only_when_asked_and_filters_by_language(items):
    assert not any(item.condition == "voice" for item in items)
    clips_en = {item.clip_id for item in items if item.lang == "en"}
    voice = seed_items(langs=["en"], conditions=["voice"])
    assert {item.clip_id for item in voice} == clips_en
    assert all(item.text_emotion != item.audio_emotion and "tone of voice" in item.instruction for item in voice)
    assert len(voice) == 9 * (len(emotions()) - 1)


def test_unknown_condition_is_a_user_error():
    with pytest.raises(ModalflipError, match="unknown condition"):
        build_items([], conditions=["sarcastic"])
