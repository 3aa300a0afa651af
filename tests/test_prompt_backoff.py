"""Out of memory in the prompt search: the scoring batch is halved, the user is told, and the numbers stay the same."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from conftest import sensitive_tiny_qwen2_audio
from probes.inputs import load_probe_set
from prompts.grammar import load_grammar
from prompts.objective import Scorer, TextControl, prompted
from prompts.search import SearchConfig, label_ids_all, run
from stimuli.conditions import seed_items


@pytest.fixture(scope="module")
def tiny():
    return sensitive_tiny_qwen2_audio()


@pytest.fixture(scope="module")
def probe_set(tiny):
    items = [i for i in seed_items(["en"], ("conflict", "consistent")) if i.clip_id.split("-")[0] in ("A1", "A3")]
    return load_probe_set(tiny, items)


@contextmanager
def small_gpu(adapter, rows: int):
    """Every decoder layer called on more than `rows` rows raises CUDA's out-of-memory error."""
    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[0] > rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in adapter.decoder_layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _search(tiny, probe_set, tmp_path, name, said):
    config = SearchConfig(study_name=name, storage=f"sqlite:///{tmp_path / name}.db", trials=3, layers=(1, 4),
                          slice_size=0, startup_trials=3, batch_size=8, cache="prefix")
    return run(tiny, probe_set, config, say=said.append)


def test_search_on_a_small_gpu_halves_the_batch_and_scores_the_same(tiny, probe_set, tmp_path):
    roomy = _search(tiny, probe_set, tmp_path, "roomy", [])
    said = []
    with small_gpu(tiny, 2):
        cramped = _search(tiny, probe_set, tmp_path, "cramped", said)
    assert said == ["out of memory at items per forward = 8; retrying with 4",
                    "out of memory at items per forward = 4; retrying with 2"]
    assert [t["slots"] for t in cramped.trials] == [t["slots"] for t in roomy.trials]
    assert [t["value"] for t in cramped.trials] == pytest.approx([t["value"] for t in roomy.trials], abs=1e-5)


def test_text_control_on_a_small_gpu_halves_the_patched_pairs(tiny, probe_set):
    grammar = load_grammar()
    asked = prompted(probe_set, grammar, grammar.seed_prompt, label_ids_all(tiny))
    roomy = TextControl(Scorer(tiny, (1, 4), batch_size=2), probe_set.items, batch_pairs=4)
    expected = roomy.evaluate(asked, roomy.units)
    said = []
    cramped = TextControl(Scorer(tiny, (1, 4), batch_size=2, say=said.append), probe_set.items, batch_pairs=4)
    with small_gpu(tiny, 8):  # a sweep of 4 pairs x 4 layers is 16 rows
        rows = cramped.evaluate(asked, cramped.units)
    assert said and all("patched pairs per forward" in line for line in said)
    assert cramped.config.batch_pairs < 4
    for got, want in zip(rows, expected):
        assert got["ld_patched"] == pytest.approx(want["ld_patched"], abs=1e-5)

