"""Logits only where they are read: a traced forward computes the head on the asked rows, never on every position."""
from __future__ import annotations

import pytest
import torch

from models.forward import run_traced
from models.prompting import chat_prompt
from stimuli import spec


def _batch(adapter):
    """Three rows of different lengths (so different answer positions, right padding)."""
    words = spec.label_words("en")
    instructions = ["Judge the emotion.", f"The speaker says they are {words['sad']}. Judge the emotion.",
                    f"Listen closely. The text claims {words['happy']}. Answer with one emotion word."]
    waves = [0.1 * torch.sin(torch.linspace(0, 300 * (k + 1), 16000 * (k + 1))) for k in range(3)]
    return adapter.build_batch(waves, [chat_prompt(text, "en") for text in instructions])


def _head_inputs(adapter):
    seen = []
    handle = adapter.lm_head.register_forward_hook(lambda module, args, output: seen.append(tuple(args[0].shape)))
    return seen, handle


def test_answer_row_logits_equal_the_full_forwards_logits(tiny_adapter):
    batch = _batch(tiny_adapter)
    answers = batch.answer_positions()
    assert len(set(answers.tolist())) == 3
    rows = torch.arange(3)
    with torch.no_grad():
        full = tiny_adapter.model(**batch.inputs, use_cache=False).logits  # (batch, seq, vocab)
        seen, handle = _head_inputs(tiny_adapter)
        try:
            trace = run_traced(tiny_adapter, batch, logits_at=answers)
        finally:
            handle.remove()
    assert trace.logits.shape == (3, full.shape[-1])
    assert torch.allclose(trace.logits, full[rows, answers], atol=1e-5)
    assert seen == [(3, tiny_adapter.model.config.text_config.hidden_size)]  # the head saw the three rows only


def test_a_trace_that_asks_for_no_logits_runs_no_head(tiny_adapter):
    batch = _batch(tiny_adapter)
    with torch.no_grad():
        seen, handle = _head_inputs(tiny_adapter)
        try:
            trace = run_traced(tiny_adapter, batch)
        finally:
            handle.remove()
    assert trace.logits is None and seen == [] and len(trace.resid) == tiny_adapter.n_layers + 1


def test_logits_need_the_whole_forward(tiny_adapter):
    batch = _batch(tiny_adapter)
    with pytest.raises(ValueError, match="logits_at"):
        run_traced(tiny_adapter, batch, stop_after=1, logits_at=batch.answer_positions())
