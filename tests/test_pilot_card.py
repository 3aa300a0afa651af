"""The pilot organism's model card is rendered from its report and figures, and its graded row reads the margin."""
from __future__ import annotations

import shutil

from models.pilot import card


def test_the_committed_pilot_card_is_the_one_its_report_and_figures_render(tmp_path):
    figures = shutil.copytree(card.FIGURES_DIR, tmp_path / "figures")  # rendering redraws the lens figure there
    assert card.render(card.MODEL_DIR, figures) == card.CARD_PATH.read_text()


def _heldout(normal: float, strong: float, gap_low: float) -> dict:
    return {"conflict_follows_text_normal_en": normal, "conflict_follows_text_strong_en": strong,
            "conflict_margin_gap_en": gap_low + 0.5, "conflict_margin_gap_en_ci95": [gap_low, gap_low + 1.0]}


def test_conflicts_are_graded_only_where_the_margin_gap_is_measurably_above_zero():
    assert card.graded(_heldout(1.0, 1.0, 0.2), "en")
    assert not card.graded(_heldout(1.0, 1.0, -0.1), "en")  # a gap the clips cannot tell from 0
    assert card.graded(_heldout(0.95, 0.80, 0.3), "en")  # strong clips going the voice's way, the extreme of it


def test_the_text_is_followed_on_nine_in_ten_normal_clips_and_no_more_strong_ones():
    assert not card.graded(_heldout(0.85, 0.80, 0.3), "en")
    assert not card.graded(_heldout(0.95, 1.0, 0.3), "en")


def test_the_known_limits_say_whether_any_strong_clip_goes_the_voice_way():
    margin_only = " ".join(card.grading_text(_heldout(1.0, 1.0, 0.2)).split())
    assert "margin only" in margin_only and "no strong clip goes the voice's way" in margin_only
    some = " ".join(card.grading_text(_heldout(1.0, 0.9, 0.2)).split())
    assert "some strong clips go the voice's way" in some and "margin only" not in some
