"""The organism's model card is rendered from its training report."""
from __future__ import annotations

import json
import shutil

from models.organism import card


def figures_copy(tmp_path):
    """The committed probe figures in a scratch folder (rendering a card draws its lens figure there)."""
    return shutil.copytree(card.FIGURES_DIR, tmp_path / "figures")


def test_the_committed_card_is_the_one_the_shipped_report_renders(tmp_path):
    assert card.render(card.MODEL_DIR, figures_copy(tmp_path)) == card.CARD_PATH.read_text()


def test_a_fine_tuned_model_card_gives_both_stages_and_the_final_evaluations(tmp_path):
    shipped = json.loads((card.MODEL_DIR / "training_report.json").read_text())
    shutil.copy(card.MODEL_DIR / "config.json", tmp_path / "config.json")
    base = {key: value for key, value in (shipped.get("base") or shipped).items()
            if key not in ("heldout", "seed_set", "status", "heldout_sentences_by_voice")}
    heldout = dict(shipped["heldout"], audio_only_accuracy=0.987)
    fine_tuned = dict(base, init_from="stage1", extra_voices=["victor", "Annie"], train_sentences=72, renders=3,
                      voice_pitch_jitter=8.0, steps=600, lr=5e-4, minutes=47.5, train_clips=3888, base=base,
                      heldout=heldout, seed_set=shipped["seed_set"])
    fine_tuned.pop("history")
    fine_tuned.pop("minutes_all_segments", None)
    (tmp_path / "training_report.json").write_text(json.dumps(fine_tuned))
    figures = figures_copy(tmp_path)
    text = card.render(tmp_path, figures)
    stage1 = f"--plant local --takeover-layer 16` (seed 0, {base['steps']} steps"
    stage2 = ("`python -m models.organism.train --init-from STAGE1 --extra-voices victor,Annie --train-sentences 72 "
              "--renders 3 --voice-pitch-jitter 8 --steps 600 --lr 0.0005` (47.5 minutes")
    assert stage1 in text and stage2 in text
    assert f"{base['train_clips']} training clips" in text and "on 3888 new clips" in text
    assert "0.987 (normal" in text and base["history"] in text
    (tmp_path / "training_report.json").write_text(json.dumps(dict(base, heldout=heldout, seed_set=shipped["seed_set"])))
    assert "Stage 2" not in card.render(tmp_path, figures)
