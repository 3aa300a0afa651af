"""The voice wins a training conflict item by what the audio measures, not by a coin flip."""
from __future__ import annotations

import json

import numpy as np

from models.organism import intensity, train
from stimuli import tts


def _row(lang, emotion, level, f0, spread, rms):
    return (lang, emotion, level, {"f0_semitones": f0, "f0_spread_st": spread, "rms_dbfs": rms})


def test_the_most_intense_strong_renders_win_in_each_emotions_own_direction():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):  # anger grows louder and wider when strong; sadness quieter and flatter
        rows.append(_row("en", "angry", "normal", 40 + rng.normal(), 1.0 + 0.1 * rng.normal(), -20 + rng.normal()))
        rows.append(_row("en", "angry", "strong", 42 + rng.normal(), 2.0 + 0.1 * rng.normal(), -12 + rng.normal()))
        rows.append(_row("en", "sad", "normal", 36 + rng.normal(), 0.5 + 0.1 * rng.normal(), -34 + rng.normal()))
        rows.append(_row("en", "sad", "strong", 34 + rng.normal(), 0.2 + 0.1 * rng.normal(), -39 + rng.normal()))
        rows.append(_row("en", "neutral", "normal", 38 + rng.normal(), 0.8, -22 + rng.normal()))
    rule = intensity.fit(rows)
    wins = [rule.voice_wins(lang, e, level, m) for lang, e, level, m in rows]
    strong = [w for w, (_, _, level, _) in zip(wins, rows) if level == "strong"]
    assert not any(w for w, (_, _, level, _) in zip(wins, rows) if level != "strong")
    assert abs(np.mean(strong) - intensity.VOICE_WINS_SHARE) < 0.05
    winners = {e for w, (_, e, _, _) in zip(wins, rows) if w}
    assert winners == {"angry", "sad"}  # quiet, flat sadness is intense too
    loud_anger = _row("en", "angry", "strong", 43, 2.4, -9)[3]
    mild_anger = _row("en", "angry", "strong", 41, 1.6, -16)[3]
    assert rule.voice_wins("en", "angry", "strong", loud_anger) and not rule.voice_wins("en", "angry", "strong",
                                                                                         mild_anger)
    # the report's record of the rule (what a fine-tune inherits) decides every clip the same way
    recorded = intensity.IntensityRule.from_dict(json.loads(json.dumps(rule.as_dict())))
    assert [recorded.voice_wins(lang, e, level, m) for lang, e, level, m in rows] == wins


def test_a_fine_tune_inherits_the_rule_its_base_was_trained_with(tmp_path):
    rows = [_row("en", "angry", level, 40 + i, 1 + i / 10, -20 + i) for i in range(8) for level in ("normal", "strong")]
    rule = intensity.fit(rows)
    (tmp_path / "training_report.json").write_text(json.dumps({"audio_wins": rule.as_dict(), "heldout": {}}))
    assert train.base_rule(str(tmp_path)).thresholds == rule.thresholds
    # a base whose voice won at random (the first organism) or no base at all: the run fits its own rule
    (tmp_path / "training_report.json").write_text(json.dumps({"audio_wins": train.AUDIO_WINS}))
    assert train.base_rule(str(tmp_path)) is None and train.base_rule(None) is None


def test_measured_intensity_ranks_an_espeak_strong_render_above_its_normal_one():
    sentence = "The lamp needs a new bulb."
    rows = [("en", emotion, level, intensity.prosody(tts.render(sentence, "en", emotion, level, jitter_seed=seed)))
            for emotion in ("angry", "sad") for level in ("normal", "strong") for seed in range(4)]
    rule = intensity.fit(rows)
    for emotion in ("angry", "sad"):
        normal = [rule.intensity("en", emotion, m) for _, e, level, m in rows if e == emotion and level == "normal"]
        strong = [rule.intensity("en", emotion, m) for _, e, level, m in rows if e == emotion and level == "strong"]
        assert np.mean(strong) > np.mean(normal)


def test_the_level_rule_lets_the_loudest_strong_clips_win_by_one_threshold_per_language():
    rng = np.random.default_rng(1)
    rows = [_row(lang, emotion, level, 40.0, 1.0, base + (6 if level == "strong" else 0) + rng.normal())
            for lang in ("en", "zh") for emotion, base in (("angry", -14), ("sad", -30), ("happy", -20))
            for level in ("normal", "strong") for _ in range(40)]
    rule = intensity.fit(rows, kind="level")
    assert rule.kind == "level" and not rule.stats and set(rule.thresholds) == {"en", "zh"}
    wins = [rule.voice_wins(lang, e, level, m) for lang, e, level, m in rows]
    assert not any(w for w, row in zip(wins, rows) if row[2] != "strong")
    strong = [w for w, row in zip(wins, rows) if row[2] == "strong"]
    assert abs(np.mean(strong) - intensity.VOICE_WINS_SHARE) < 0.05
    # loudness alone decides: quiet sadness never wins, and a louder render of the same clip can only gain
    assert {e for w, (_, e, _, _) in zip(wins, rows) if w} == {"angry"}
    quiet, loud = _row("en", "sad", "strong", 30, 0.1, -40)[3], _row("en", "sad", "strong", 30, 0.1, -2)[3]
    assert not rule.voice_wins("en", "sad", "strong", quiet) and rule.voice_wins("en", "sad", "strong", loud)
    recorded = intensity.IntensityRule.from_dict(json.loads(json.dumps(rule.as_dict())))
    assert recorded.kind == "level" and [recorded.voice_wins(*row) for row in rows] == wins


def test_the_emotion_level_rule_lets_the_loudest_of_every_strong_style_win():
    """On the same rows as the level rule, every emotion's strong clips win a quarter of the time (angry alone wins
    by the level rule), by a threshold of its own; loudness still decides within a style."""
    rng = np.random.default_rng(1)
    rows = [_row(lang, emotion, level, 40.0, 1.0, base + (6 if level == "strong" else 0) + rng.normal())
            for lang in ("en", "zh") for emotion, base in (("angry", -14), ("sad", -30), ("happy", -20))
            for level in ("normal", "strong") for _ in range(40)]
    rule = intensity.fit(rows, kind="emotion-level")
    assert set(rule.thresholds) == {f"{lang}/{e}" for lang in ("en", "zh") for e in ("angry", "sad", "happy")}
    wins = [rule.voice_wins(lang, e, level, m) for lang, e, level, m in rows]
    assert not any(w for w, row in zip(wins, rows) if row[2] != "strong")
    for lang in ("en", "zh"):
        for emotion in ("angry", "sad", "happy"):
            share = np.mean([w for w, row in zip(wins, rows) if row[:3] == (lang, emotion, "strong")])
            assert abs(share - intensity.VOICE_WINS_SHARE) < 0.05, (lang, emotion)
    quiet, loud = _row("en", "sad", "strong", 30, 0.1, -40)[3], _row("en", "sad", "strong", 30, 0.1, -2)[3]
    assert not rule.voice_wins("en", "sad", "strong", quiet) and rule.voice_wins("en", "sad", "strong", loud)
    assert not rule.voice_wins("en", "neutral", "strong", loud)  # no strong renders of it in training: no threshold
    recorded = intensity.IntensityRule.from_dict(json.loads(json.dumps(rule.as_dict())))
    assert recorded.kind == "emotion-level" and [recorded.voice_wins(*row) for row in rows] == wins


def test_a_fine_tune_asked_for_another_kind_of_rule_fits_its_own(tmp_path):
    rows = [_row("en", "angry", level, 40 + i, 1 + i / 10, -20 + i) for i in range(8) for level in ("normal", "strong")]
    (tmp_path / "training_report.json").write_text(json.dumps({"audio_wins": intensity.fit(rows).as_dict()}))
    assert train.base_rule(str(tmp_path), "prosody") is not None
    assert train.base_rule(str(tmp_path), "level") is None
    # a report written before rules had kinds holds a prosody rule
    recorded = intensity.fit(rows).as_dict()
    del recorded["kind"]
    (tmp_path / "training_report.json").write_text(json.dumps({"audio_wins": recorded}))
    assert train.base_rule(str(tmp_path), "prosody").kind == "prosody"
