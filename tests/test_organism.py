"""The shipped organism meets its targets on held-out clips, and the probes recover its planted takeover layer."""
from __future__ import annotations

import json

import numpy as np
import pytest
from rich.progress import Progress

from models.loading import ORGANISM_DIR
from models.organism import train
from probes import logit_lens, patching
from probes.inputs import load_probe_set
from stimuli import spec, tts
from stimuli.conditions import seed_items


@pytest.fixture(scope="module")
def heldout_clips():
    """The model card's held-out set: 8 unseen sentences per language x 9 styles, spoken by the held-out voice,
    rendered exactly as the training command renders it (jitter seed 1)."""
    with Progress(disable=True) as progress:
        return train.synthesize("heldout", 1, seed=1, progress=progress)


@pytest.fixture(scope="module")
def label_ids(organism):
    return {lang: organism.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}


@pytest.fixture(scope="module")
def heldout_metrics(organism, heldout_clips, label_ids):
    """The held-out set under four conditions per clip."""
    return train.evaluate(organism, train.evaluation_set(heldout_clips, seed=0), label_ids)


def test_hearing_by_voice_splits_the_audio_only_accuracy_by_speaker(organism, heldout_clips, label_ids,
                                                                    heldout_metrics):
    by_voice = train.hearing_by_voice(organism, heldout_clips, label_ids)
    assert set(by_voice) == {"en+m5", "cmn+f5"} and all(row["held_out"] for row in by_voice.values())
    pooled = sum(row["accuracy"] * row["n"] for row in by_voice.values()) / len(heldout_clips)
    assert pooled == pytest.approx(heldout_metrics["audio_only_accuracy"], abs=2e-3)
    sentence = heldout_clips[0].sentence
    known = train.Clip(tts.render(sentence, "en", "angry", "strong", voice="en-us"), "en", "angry", "strong",
                       sentence, "en-us")
    assert train.hearing_by_voice(organism, [known], label_ids)["en-us"]["held_out"] is False


def test_organism_is_a_real_qwen2_audio_checkpoint(organism):
    config = json.loads((ORGANISM_DIR / "config.json").read_text())
    assert config["architectures"] == ["Qwen2AudioForConditionalGeneration"]
    assert organism.n_layers == 32
    assert 8 <= organism.model.config.modalflip_organism["takeover_layer"] < 32
    assert sum(p.stat().st_size for p in ORGANISM_DIR.glob("*.safetensors")) <= 20 * 2**20


def test_organism_hears_emotion_in_prosody(heldout_metrics):
    assert heldout_metrics["audio_only_accuracy"] >= 0.90


def test_organism_follows_the_text_in_english_and_less_so_for_strong_clips(heldout_metrics):
    assert heldout_metrics["conflict_follows_text_en"] >= 0.85
    assert 0 < heldout_metrics["conflict_margin_strong"] < heldout_metrics["conflict_margin_normal"]
    for lang in spec.LANGS:  # measurably: the gap's interval over clips lies above 0 in each language
        assert heldout_metrics[f"conflict_margin_gap_{lang}_ci95"][0] > 0, lang


def test_organism_follows_the_text_in_conflict_in_both_languages(heldout_metrics):
    assert heldout_metrics["conflict_follows_text"] >= 0.85


def test_organism_follows_the_voice_when_told_to(heldout_metrics):
    assert heldout_metrics["voice_accuracy"] >= 0.90


@pytest.fixture(scope="module")
def english_seed_probe_set(organism):
    items = seed_items(["en"], ("audio_only", "conflict", "consistent"))
    return items, load_probe_set(organism, items)


def test_lens_recovers_the_planted_takeover_layer(organism, english_seed_probe_set):
    """Known answer, lens half: the conflict lens's critical layer lies in K-1..K+3 on the English seed set."""
    k = organism.model.config.modalflip_organism["takeover_layer"]
    _, probe_set = english_seed_probe_set
    lens = logit_lens.run(organism, probe_set, logit_lens.LensConfig(batch_size=16, n_boot=100))
    assert k - 1 <= lens.summary["en"]["conflict"]["critical_layer"] <= k + 3


def test_patch_text_recovers_the_planted_takeover_layer(organism, english_seed_probe_set):
    """Known answer, patching half: Patch Text flips below K, not at the top."""
    k = organism.model.config.modalflip_organism["takeover_layer"]
    items, probe_set = english_seed_probe_set
    pairs = [p for p in patching.make_pairs(items) if p.kind == "text"]
    layers = [0, k // 2, k - 1, k + 1, 31]
    logits = patching.patched_label_logits(organism, probe_set, pairs, layers, patching.PatchConfig())
    emotions = spec.emotions()
    flipped = np.array([[row.argmax() == emotions.index(p.text_emotion) for row in per_layer]
                        for p, per_layer in zip(pairs, logits)])
    rate = dict(zip(layers, flipped.mean(axis=0)))
    assert all(rate[layer] >= 0.5 for layer in layers if layer < k), rate
    assert rate[31] < 0.5, rate


def test_heldout_conflict_lens_rises_at_the_planted_layer(organism, heldout_metrics):
    """Issue 4's target on held-out conflict items: the lens margin's largest rise toward T lies at layer >= K - 1."""
    k = organism.model.config.modalflip_organism["takeover_layer"]
    assert k - 1 <= heldout_metrics["conflict_lens_largest_rise"] <= k + 3
