"""The model hash names the model (architecture and weights), not the folder or the library it was loaded with."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_qwen2_audio
from models.loading import config_hash, load_model, model_hash, weights_fingerprint


def _saved_copy(adapter, folder):
    adapter.model.save_pretrained(folder)
    adapter.processor.save_pretrained(folder)
    return load_model(str(folder), device="cpu")


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    adapter = tiny_qwen2_audio()
    root = tmp_path_factory.mktemp("hash")
    return adapter, _saved_copy(adapter, root / "one" / "model"), _saved_copy(adapter, root / "elsewhere" / "copy")


def test_two_copies_of_one_model_in_different_folders_have_one_hash(copies):
    built, first, second = copies
    assert first.model.config._name_or_path != second.model.config._name_or_path
    assert model_hash(first) == model_hash(second)
    assert model_hash(built) == model_hash(first)  # built in memory (no path, no dtype field) or loaded


def test_the_hash_ignores_the_library_version_and_the_loading_dtype_field(copies):
    _, first, _ = copies
    before = config_hash(first)
    config = first.model.config
    saved = config.transformers_version, config.text_config.dtype
    config.transformers_version, config.text_config.dtype = "0.0.1", torch.bfloat16
    try:
        assert config_hash(first) == before
    finally:
        config.transformers_version, config.text_config.dtype = saved


def test_changing_any_weight_changes_the_hash():
    adapter = tiny_qwen2_audio()
    before = model_hash(adapter)
    with torch.no_grad():
        adapter.lm_head.weight[-1, -1] += 1e-3  # far past the first values of the tensor
    assert weights_fingerprint(adapter) != before and model_hash(adapter) != before


def test_changing_the_layer_count_changes_the_hash():
    four, three = tiny_qwen2_audio(n_layers=4), tiny_qwen2_audio(n_layers=3)
    assert config_hash(four) != config_hash(three)
    assert model_hash(four) != model_hash(three)
