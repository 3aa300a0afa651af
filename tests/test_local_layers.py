"""An organism config whose decoder layers below K are token-local (sliding window 1): nothing crosses tokens
before K, and the resumed forwards the probes use stay exact on such layers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.adapter import ModelAdapter
from models.families.qwen2_audio import FAMILY
from models.forward import lens, resume_suffix, run_traced, suffix_supported
from models.organism import build
from models.prompting import chat_prompt
from probes.inputs import load_probe_set
from probes.logit_lens import label_logits
from prompts.grammar import load_grammar
from prompts.objective import Scorer, prompted
from prompts.search import label_ids_all
from stimuli import spec, tts
from stimuli.conditions import seed_items

K = 2


@pytest.fixture(scope="module")
def local_adapter():
    processor = build.build_processor()
    model = build.build_model(build.build_config(processor.tokenizer, 4, K, local_below=True), seed=0).eval()
    return ModelAdapter(model, processor, FAMILY, "local-organism")


def _batch(adapter, claims):
    wave = tts.render("The lamp needs a new bulb.", "en", "happy", "normal")
    words = spec.label_words("en")
    prompts = [chat_prompt(f"Judge the emotion as {words[c]}. Answer with one emotion word.", "en", words[c])
               for c in claims]
    return adapter.build_batch([wave] * len(claims), prompts)


def test_the_config_records_the_local_layers(local_adapter):
    config = local_adapter.model.config
    assert config.text_config.layer_types == ["sliding_attention"] * K + ["full_attention"] * 2
    assert config.text_config.sliding_window == 1
    assert config.modalflip_organism == {"takeover_layer": K, "window_seconds": build.WINDOW_SECONDS,
                                         "local_below_takeover": True}


def test_nothing_crosses_tokens_below_k(local_adapter):
    """Two prompts that differ in the asserted word only: identical residuals at every other position up to
    resid[K], different from the first full-attention layer on."""
    batch = _batch(local_adapter, ["happy", "sad"])
    with torch.no_grad():
        trace = run_traced(local_adapter, batch)
    span = batch.spans[0]
    after = slice(span.instruction.stop, span.length)
    for layer in range(K + 1):
        assert torch.equal(trace.resid[layer][0, after], trace.resid[layer][1, after])
    assert not torch.allclose(trace.resid[K + 1][0, after], trace.resid[K + 1][1, after])


def test_suffix_resume_is_exact_on_local_layers(local_adapter):
    batch = _batch(local_adapter, ["happy", "sad"])
    prefix = int(batch.spans[0].instruction.start)
    assert suffix_supported(local_adapter)
    with torch.no_grad():
        logits = local_adapter.model(**batch.inputs, use_cache=False).logits
        trace = run_traced(local_adapter, batch, kv_prefix=prefix)
        assert trace.prefix == prefix
        for start in range(4):
            suffix = resume_suffix(local_adapter, trace, start, trace.resid[start][:, prefix:])
            assert torch.allclose(lens(local_adapter, suffix), logits[:, prefix:], atol=1e-5)


def test_prompt_search_prefix_cache_is_exact_on_local_layers(local_adapter):
    """The prompt search's cached prefix keys and values (which a sliding-window cache layer would cut to its
    window) give the readouts of a plain forward, for a prompt that varies after the audio and one that does not."""
    grammar = load_grammar()
    items = [i for i in seed_items(["en"], ("conflict",)) if i.clip_id.split("-")[0] in ("A1", "A3")]
    probe_set = load_probe_set(local_adapter, items)
    for sample in (grammar.seed_prompt, dict(grammar.seed_prompt, claim_position="before_audio")):
        asked = prompted(probe_set, grammar, sample, label_ids_all(local_adapter))
        _, final = label_logits(local_adapter, asked, probe_set.items, batch_size=16)
        scorer = Scorer(local_adapter, (1, 3), batch_size=5, cache="prefix")
        for _ in range(2):  # the second pass reads the filled cache
            readouts = scorer.readouts(asked, probe_set.items)
            for item in probe_set.items:
                np.testing.assert_allclose(readouts[item.item_id].final, final[item.item_id], atol=1e-5)
        assert scorer.prefixes
