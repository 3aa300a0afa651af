"""Resumed and cached forwards on sliding-window attention wider than one token, alone and mixed with full
attention: the prompt search's prefix cache and a resume from an early-stopped trace give the plain forward's
numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import sensitive_tiny_qwen2_audio
from models.forward import lens, resume, run_traced
from probes.inputs import load_probe_set
from prompts.grammar import load_grammar
from prompts.objective import Scorer, prompted
from prompts.search import label_ids_all
from stimuli.conditions import seed_items

WINDOW = 4
LAYER_TYPES = {
    "sliding": ["sliding_attention"] * 4,
    "mixed": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
}


@pytest.fixture(scope="module", params=list(LAYER_TYPES))
def windowed(request):
    adapter = sensitive_tiny_qwen2_audio(LAYER_TYPES[request.param], sliding_window=WINDOW)
    assert adapter.model.config.text_config.layer_types == LAYER_TYPES[request.param]
    return adapter


@pytest.fixture(scope="module")
def probe_set(windowed):
    items = [i for i in seed_items(["en"], ("conflict",)) if i.clip_id.split("-")[0] in ("A1", "A3")]
    return load_probe_set(windowed, items)


def test_the_window_cuts_the_context(windowed, probe_set):
    """The sliding layers do limit attention here: the answer row differs from the same weights with full
    attention in every layer."""
    full = sensitive_tiny_qwen2_audio(["full_attention"] * 4)
    for (name, ours), theirs in zip(windowed.model.state_dict().items(), full.model.state_dict().values()):
        assert torch.equal(ours, theirs), name
    grammar = load_grammar()
    asked = prompted(probe_set, grammar, grammar.seed_prompt, label_ids_all(windowed))
    item = probe_set.items[0]
    batch = windowed.build_batch([asked.wave(item.clip_id)], [asked.prompt(item)])
    answer = batch.spans[0].answer
    with torch.no_grad():
        cut = lens(windowed, run_traced(windowed, batch).resid[-1][0, answer])
        whole = lens(full, run_traced(full, batch).resid[-1][0, answer])
    assert (cut - whole).abs().max() > 1e-3


def test_prefix_cache_scores_equal_the_uncached_scores(windowed, probe_set):
    """A prefix longer than the window is cached whole: the suffix forward reads the same numbers as a plain one,
    for a prompt that varies after the audio and for one with the claim before it."""
    grammar = load_grammar()
    for sample in (grammar.seed_prompt, dict(grammar.seed_prompt, claim_position="before_audio")):
        asked = prompted(probe_set, grammar, sample, label_ids_all(windowed))
        plain = Scorer(windowed, (1, 3), batch_size=3, cache="none").readouts(asked, probe_set.items)
        scorer = Scorer(windowed, (1, 3), batch_size=3, cache="prefix")
        for _ in range(2):  # the second pass reads the filled cache
            cached = scorer.readouts(asked, probe_set.items)
            for item in probe_set.items:
                np.testing.assert_allclose(cached[item.item_id].final, plain[item.item_id].final, atol=1e-5)
                np.testing.assert_allclose(cached[item.item_id].window, plain[item.item_id].window, atol=1e-5)
        assert scorer.prefixes and scorer.prefix_hits > 0


@pytest.mark.parametrize("stop_after", [2, 3])
def test_resume_from_an_early_stopped_trace_equals_the_full_forward(windowed, probe_set, stop_after):
    """Layers the early-stopped run never reached take the mask of a reached layer of their own attention type."""
    grammar = load_grammar()
    asked = prompted(probe_set, grammar, grammar.seed_prompt, label_ids_all(windowed))
    items = probe_set.items[:3]
    batch = windowed.build_batch([asked.wave(i.clip_id) for i in items], [asked.prompt(i) for i in items])
    with torch.no_grad():
        full = run_traced(windowed, batch)
        early = run_traced(windowed, batch, stop_after=stop_after)
        resumed = resume(windowed, early, stop_after, early.resid[stop_after])
    assert early.logits is None and len(early.resid) == stop_after + 1
    assert torch.allclose(resumed, full.resid[-1], atol=1e-5)
    assert torch.allclose(lens(windowed, resumed), lens(windowed, full.resid[-1]), atol=1e-5)


def test_resume_refuses_a_layer_whose_attention_type_was_never_reached(probe_set):
    adapter = sensitive_tiny_qwen2_audio(LAYER_TYPES["mixed"], sliding_window=WINDOW)
    grammar = load_grammar()
    asked = prompted(probe_set, grammar, grammar.seed_prompt, label_ids_all(adapter))
    item = probe_set.items[0]
    batch = adapter.build_batch([asked.wave(item.clip_id)], [asked.prompt(item)])
    with torch.no_grad():
        early = run_traced(adapter, batch, stop_after=1)  # only layer 0 (sliding) ran
        with pytest.raises(ValueError, match="layer 1 .full_attention. was not reached"):
            resume(adapter, early, 1, early.resid[1])
