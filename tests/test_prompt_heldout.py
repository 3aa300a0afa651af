"""The searched prompt's held-out numbers: an interval over clips and Δlogit = logit(T) − logit(A) per item."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_qwen2_audio
from probes.inputs import load_probe_set
from probes.logit_lens import label_logits
from prompts.grammar import load_grammar
from prompts.search import evaluate
from stimuli import spec
from stimuli.conditions import seed_items


@pytest.fixture(scope="module")
def tiny():
    return tiny_qwen2_audio(n_layers=3)


def test_heldout_evaluation_clusters_on_clips_and_reads_delta_as_text_minus_voice(tiny):
    items = seed_items(["en"], ("conflict",))[:12]  # three clips, four claims each
    probe_set = load_probe_set(tiny, items)
    grammar = load_grammar()
    result = evaluate(tiny, probe_set, grammar.seed_prompt, items, (1, 2), batch_size=12)
    assert (result.n, result.interval.n_units, result.interval.unit) == (12, 3, "clip")
    assert {row["clip_id"] for row in result.items} == {item.clip_id for item in items}
    emotions = spec.emotions()
    seed_lens, _ = label_logits(tiny, probe_set, items, 12)  # the seed prompt is the stimulus set's own
    for row, item in zip(result.items, items):
        t, a = emotions.index(item.text_emotion), emotions.index(item.audio_emotion)
        assert row["text_emotion"] == item.text_emotion
        assert row["delta_last"] == pytest.approx(float(seed_lens[item.item_id][-1, t] - seed_lens[item.item_id][-1, a]),
                                                  abs=1e-4)
    assert np.isclose(result.flip_rate, np.mean([row["flipped"] for row in result.items]))
