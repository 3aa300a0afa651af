"""The prompt-search objectives on a tiny random Qwen2-Audio: the caches change the cost, never the numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import sensitive_tiny_qwen2_audio
from models.forward import run_traced
from probes import patching
from probes.inputs import load_probe_set
from probes.logit_lens import label_logits
from prompts.grammar import load_grammar
from prompts.objective import AudioFlip, Scorer, TextControl, prompted
from prompts.search import label_ids_all
from stimuli.conditions import seed_items

GRAMMAR = load_grammar()
SAMPLES = {
    "seed (varies after the audio)": GRAMMAR.seed_prompt,
    "claim before the audio, other language": dict(GRAMMAR.seed_prompt, claim_position="before_audio",
                                                   prompt_lang="other"),
    "claim in the system turn, rubric, cue": {**GRAMMAR.seed_prompt, "family": "rubric", "claim/rubric": "text_says",
                                              "claim_position": "system", "cue": "tone", "cue/tone": "prosody",
                                              "emphasis": "repeat"},
}


@pytest.fixture(scope="module")
def tiny():
    return sensitive_tiny_qwen2_audio()


@pytest.fixture(scope="module")
def probe_set(tiny):
    items = [i for i in seed_items(["en", "zh"], ("conflict", "consistent"))
             if i.clip_id.split("-")[0] in ("A1", "A3", "A7")]
    return load_probe_set(tiny, items)


def test_cached_audio_embeddings_equal_the_models_own_merge(tiny, probe_set):
    asked = prompted(probe_set, GRAMMAR, GRAMMAR.seed_prompt, label_ids_all(tiny))
    chunk = probe_set.items[:6]
    batch = tiny.build_batch([asked.wave(i.clip_id) for i in chunk], [asked.prompt(i) for i in chunk])
    scorer = Scorer(tiny, (1, 4), cache="audio")
    with torch.no_grad():
        ours = scorer._embeds(asked, batch, chunk)
        theirs = run_traced(tiny, batch, stop_after=0).resid[0]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_cached_and_uncached_readouts_agree_with_the_logit_lens(tiny, probe_set, name):
    asked = prompted(probe_set, GRAMMAR, SAMPLES[name], label_ids_all(tiny))
    items = [i for i in probe_set.items if i.condition == "conflict"]
    per_layer, final = label_logits(tiny, asked, items, batch_size=16)
    for cache in ("none", "audio", "prefix"):
        scorer = Scorer(tiny, (1, 4), batch_size=5, cache=cache)
        for _ in range(2):  # the second pass runs on filled caches
            readouts = scorer.readouts(asked, items)
            for item in items:
                np.testing.assert_allclose(readouts[item.item_id].final, final[item.item_id], atol=1e-4)
                np.testing.assert_allclose(readouts[item.item_id].window, per_layer[item.item_id][1:5], atol=1e-4)
        # one prefix per clip where the prompt varies only after the audio, else one per (clip, T)
        per_clip = name.startswith("seed")
        expected = len({i.clip_id for i in items}) if per_clip else len(items)
        assert len(scorer.prefixes) == (expected if cache == "prefix" else 0)


def test_cached_and_uncached_audio_flip_scores_agree(tiny, probe_set):
    items = [i for i in probe_set.items if i.condition == "conflict"]
    for sample in SAMPLES.values():
        asked = prompted(probe_set, GRAMMAR, sample, label_ids_all(tiny))
        scores = []
        for cache in ("none", "prefix"):
            objective = AudioFlip(Scorer(tiny, (1, 4), cache=cache), items)
            scores.append(objective.aggregate(objective.evaluate(asked, objective.units)))
        assert scores[0].flip_rate == scores[1].flip_rate
        assert scores[0].value == pytest.approx(scores[1].value, abs=1e-4)
        assert scores[0].margin == pytest.approx(scores[1].margin, abs=1e-4)


def test_stored_prefix_caches_are_never_mutated(tiny, probe_set):
    asked = prompted(probe_set, GRAMMAR, GRAMMAR.seed_prompt, label_ids_all(tiny))
    items = [i for i in probe_set.items if i.condition == "conflict"]
    scorer = Scorer(tiny, (1, 4), cache="prefix")
    scorer.readouts(asked, items)
    before = {key: [(k.clone(), v.clone()) for k, v in layers] for key, layers in scorer.prefixes.items()}
    other = prompted(probe_set, GRAMMAR, dict(GRAMMAR.seed_prompt, answer="choose"), label_ids_all(tiny))
    scorer.readouts(other, items)
    assert set(scorer.prefixes) == set(before)
    for key, layers in scorer.prefixes.items():
        for (k, v), (k0, v0) in zip(layers, before[key]):
            assert torch.equal(k, k0) and torch.equal(v, v0)


def test_the_prefix_cache_keeps_to_its_memory_budget(tiny, probe_set):
    items = [i for i in probe_set.items if i.condition == "conflict"]
    asked = prompted(probe_set, GRAMMAR, SAMPLES["claim before the audio, other language"], label_ids_all(tiny))
    scorer = Scorer(tiny, (1, 4), batch_size=2, cache="prefix", prefix_cache_mb=0.5)  # room for about 4 prefixes
    readouts = scorer.readouts(asked, items)
    assert 0 < scorer.prefix_bytes <= 0.5 * 2**20 and len(scorer.prefixes) < len(items)
    assert scorer.prefix_bytes == sum(k.nbytes + v.nbytes for layers in scorer.prefixes.values() for k, v in layers)
    _, final = label_logits(tiny, asked, items, batch_size=16)
    for item in items:
        np.testing.assert_allclose(readouts[item.item_id].final, final[item.item_id], atol=1e-4)


def test_score_ranks_by_flips_and_breaks_ties_by_margin():
    def rows(flips, margin, n=8):
        return [dict(flipped=i < flips, margin=margin, tokens=10) for i in range(n)]
    one_flip_bad_margin = AudioFlip.aggregate(rows(1, -50.0))
    no_flip_great_margin = AudioFlip.aggregate(rows(0, 50.0))
    no_flip_good_margin = AudioFlip.aggregate(rows(0, 1.0))
    assert one_flip_bad_margin.value > no_flip_great_margin.value > no_flip_good_margin.value
    assert no_flip_great_margin.flip_rate == 0.0 and one_flip_bad_margin.flip_rate == 1 / 8
    on_a_slice = AudioFlip.aggregate(rows(1, -50.0, n=4), n_total=8)  # the pruner's slice: the scale of all 8
    assert on_a_slice.value - on_a_slice.flip_rate == pytest.approx(one_flip_bad_margin.value - 1 / 8)


def test_text_control_effect_is_the_probes_patch_text_effect(tiny, probe_set):
    """With the seed prompt (the stimulus instruction), the objective's pairs are probes.patching.run's text pairs,
    with the same clean and patched logit differences and the same normalized effects."""
    config = patching.PatchConfig(layers=[1, 2, 3], n_boot=10, batch_pairs=8)
    _, final = label_logits(tiny, probe_set, probe_set.items, batch_size=16)
    expected = {(r["receiver"], r["donor"]): r for r in patching.run(tiny, probe_set, final, config).pairs
                if r["kind"] == "text"}
    objective = TextControl(Scorer(tiny, (1, 3), cache="prefix"), probe_set.items)
    asked = prompted(probe_set, GRAMMAR, GRAMMAR.seed_prompt, label_ids_all(tiny))
    rows = objective.evaluate(asked, objective.units)
    assert len(rows) == len(expected) > 0
    for pair, row in zip(objective.units, rows):
        want = expected[(pair.receiver.item_id, pair.donor.item_id)]
        assert row["ld_receiver"] == pytest.approx(want["ld_receiver"], abs=1e-4)
        assert row["ld_donor"] == pytest.approx(want["ld_donor"], abs=1e-4)
        np.testing.assert_allclose(row["ld_patched"], want["ld_patched"], atol=1e-4)
        assert row["flips"] == want["flipped"]
        if row["effect"] is None:
            assert all(v is None for v in want["effect"])
        else:
            np.testing.assert_allclose(row["effect"], want["effect"], atol=1e-3)
    synthetic = [dict(effect=[0.5, 1.0], flips=[True, False], tokens=3), dict(effect=None, flips=[False] * 2, tokens=3)]
    score = TextControl.aggregate(synthetic)
    assert score.effect == pytest.approx(0.75) and score.flip_rate == pytest.approx(0.25)


def test_text_control_refuses_a_window_that_reaches_the_last_layer(tiny):
    from common.errors import ModalflipError

    with pytest.raises(ModalflipError, match="--layers 1-4"):
        TextControl(Scorer(tiny, (1, 5)), [])


def test_the_scorer_copies_each_batchs_readouts_off_the_device_once(tiny, probe_set, monkeypatch):
    asked = prompted(probe_set, GRAMMAR, GRAMMAR.seed_prompt, label_ids_all(tiny))
    items = [i for i in probe_set.items if i.condition == "conflict" and i.lang == "en"][:10]
    scorer = Scorer(tiny, (1, 4), batch_size=5, cache="none")
    copies = []
    cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *args, **kwargs: copies.append(self.shape) or cpu(self))
    scorer.readouts(asked, items)
    assert len(copies) == 2  # two batches of five
