"""The unseen renderer: a second eSpeak NG mapping kept out of training, and how a built-in model hears it."""
from __future__ import annotations

import json

import numpy as np
from rich.progress import Progress

from models.organism import build, train, unseen
from stimuli import spec, tts


def test_the_unseen_renderer_speaks_other_sentences_with_another_mapping():
    table = unseen.renderer()
    corpus = build.corpus()["sentences"]
    trained = {s for lang in corpus for split in corpus[lang].values() for s in split}
    assert not trained & {s for lang in spec.LANGS for s in table["sentences"][lang]}
    shipped = json.loads((tts.SPEC_DIR / "prosody.json").read_text())["styles"]
    assert set(table["styles"]) == set(shipped)
    moved = [key for key in shipped if table["styles"][key]["pitch"] != shipped[key]["pitch"]]
    assert len(moved) == len(shipped)
    # eSpeak's own knobs only: no style of the unseen renderer uses the DSP effects
    for style in table["styles"].values():
        assert style["drive"] == [1, 1] and style["tremolo_depth"] == [0, 0] and style["pauses"] == [0, 0]


def test_the_reweighted_renderer_moves_the_knobs_apart_not_together():
    """Training's --expressiveness scales pitch, range, rate and volume about the average style by one factor per
    clip; the reweighted renderer stretches pitch and rate and squeezes range, which no one factor gives."""
    table, unseen_table = unseen.renderer("reweighted"), unseen.renderer("unseen")
    corpus = build.corpus()["sentences"]
    known = {s for lang in corpus for split in corpus[lang].values() for s in split}
    known |= {s for lang in spec.LANGS for s in unseen_table["sentences"][lang]}
    assert not known & {s for lang in spec.LANGS for s in table["sentences"][lang]}
    shipped = json.loads((tts.SPEC_DIR / "prosody.json").read_text())["styles"]
    assert set(table["styles"]) == set(shipped)
    slopes = unseen.knob_slopes("reweighted")
    assert slopes["pitch"] > 1.1 and slopes["rate"] > 1.2 and slopes["range"] < 0.7, slopes
    for style in table["styles"].values():
        assert style["drive"] == [1, 1] and style["tremolo_depth"] == [0, 0] and style["pauses"] == [0, 0]
    with Progress(disable=True) as progress:
        clips = unseen.CLIP_SETS["reweighted"].render(0, progress)
    assert {c.sentence for c in clips} == {s for lang in spec.LANGS for s in table["sentences"][lang]}
    assert {c.voice for c in clips} == {v for lang in spec.LANGS for v in table["voices"][lang]}


def test_hearing_counts_each_clip_once_per_condition_per_language(organism):
    with Progress(disable=True) as progress:
        clips = unseen.unseen_clips(seed=0, progress=progress)
    per_lang = len(unseen.renderer()["voices"]["en"]) * len(unseen.renderer()["sentences"]["en"]) * 9
    assert len(clips) == 2 * per_lang
    picked = [c for c in clips if c.sentence in (unseen.renderer()["sentences"]["en"][0],
                                                  unseen.renderer()["sentences"]["zh"][0])]
    result = unseen.hearing(organism, picked)
    for lang in spec.LANGS:
        cell = result[lang]["audio_only"]
        assert cell["all"]["n"] == cell["all"]["n_units"] == len([c for c in picked if c.lang == lang])
        assert cell["normal"]["n"] + cell["strong"]["n"] == cell["all"]["n"]
        assert 0 <= cell["all"]["ci95"][0] <= cell["all"]["rate"] <= cell["all"]["ci95"][1] <= 1
    assert np.isfinite(result["en"]["voice"]["all"]["rate"])
    # the answers per style are the confusion behind the rates: they add up to the items and the hits
    for lang in spec.LANGS:
        for condition in ("audio_only", "voice"):
            styles = result["answers"][lang][condition]
            assert sum(sum(counts.values()) for counts in styles.values()) == result[lang][condition]["all"]["n"]
            hits = sum(counts.get(style.split("/")[0], 0) for style, counts in styles.items())
            assert hits == result[lang][condition]["all"]["k"]


def test_misreadings_name_the_styles_heard_as_another_emotion_largest_first():
    result = {"answers": {"zh": {"audio_only": {
        "fearful/strong": {"happy": 11, "fearful": 5}, "sad/normal": {"neutral": 7, "sad": 8, "fearful": 1},
        "angry/strong": {"angry": 13, "happy": 3}}}}}
    assert unseen.misreadings(result, "zh") == ["fearful/strong as happy 11 of 16", "sad/normal as neutral 7 of 16"]


def test_plain_renders_are_the_cards_held_out_clips_without_the_effects():
    with Progress(disable=True) as progress:
        plain = unseen.plain_clips(seed=0, progress=progress)
        styled = train.synthesize("heldout", 1, 1, progress)
    assert [(c.lang, c.sentence, c.voice, c.emotion, c.intensity) for c in plain] == \
           [(c.lang, c.sentence, c.voice, c.emotion, c.intensity) for c in styled]
    # strong fearful carries tremolo, vibrato and breath in the training renderer; its plain render has none
    fearful = [i for i, c in enumerate(styled) if (c.emotion, c.intensity) == ("fearful", "strong")]
    assert all(not np.array_equal(plain[i].wave, styled[i].wave) for i in fearful)
