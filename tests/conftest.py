"""Shared fixtures: tiny random-weight models of the real transformers classes (no downloads) and the organism."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(int(os.environ.get("MODALFLIP_TEST_THREADS", "1")))


def tiny_qwen2_audio(n_layers: int = 4, seed: int = 0, layer_types: list[str] | None = None, sliding_window: int = 4):
    """A random Qwen2AudioForConditionalGeneration with the organism's tokenizer and processor, wrapped in its
    adapter: 4 decoder layers of width 32, a 1-layer encoder of width 32, the organism's 6 s window. With
    `layer_types` ("full_attention" / "sliding_attention" per decoder layer) the sliding layers attend to the last
    `sliding_window` positions."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from models.adapter import ModelAdapter
    from models.families.qwen2_audio import FAMILY
    from models.organism import build

    processor = build.build_processor()
    tokenizer = processor.tokenizer
    config = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=32, max_source_positions=build.WINDOW_SECONDS * 50),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         **({} if layer_types is None else dict(use_sliding_window=True, sliding_window=sliding_window,
                                                               max_window_layers=0, layer_types=layer_types))),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    return ModelAdapter(model, processor, FAMILY, model_id=f"tiny-qwen2-audio-{n_layers}")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """`tiny_qwen2_audio()` saved as a checkpoint folder, for runners that take `--model <folder>`."""
    folder = tmp_path_factory.mktemp("tiny-qwen2-audio")
    adapter = tiny_qwen2_audio()
    adapter.model.save_pretrained(folder)
    adapter.processor.save_pretrained(folder)
    return folder


def sensitive_tiny_qwen2_audio(layer_types: list[str] | None = None, sliding_window: int = 4):
    """`tiny_qwen2_audio(5 layers, seed 3)` with embeddings and head rescaled so that a changed word moves the
    answer logits by more than 0.1 (plain random init barely lets one token reach the answer position)."""
    adapter = tiny_qwen2_audio(n_layers=len(layer_types) if layer_types else 5, seed=3, layer_types=layer_types,
                               sliding_window=sliding_window)
    with torch.no_grad():
        torch.nn.init.normal_(adapter.embed_tokens.weight, std=1.0)
        torch.nn.init.normal_(adapter.lm_head.weight, std=0.5)
    return adapter


def two_clips() -> list:
    """Two eSpeak clips of different length (about 1.5 s and 5.6 s; three windows for a tiny AF3)."""
    from stimuli import tts

    return [tts.render("The train leaves at noon.", "en", "happy", "normal"),
            tts.render("I did not expect to see you here today, not at all.", "en", "sad", "strong")]


def claim_prompts(emotions=("happy", "sad")) -> list:
    """English prompts asserting each of `emotions`, with the claim word marked."""
    from models.prompting import chat_prompt
    from stimuli import spec

    words = spec.label_words("en")
    return [chat_prompt(spec.render_instruction("en", "assert", words[e]), "en", claim=words[e]) for e in emotions]


@pytest.fixture(scope="session")
def tiny_adapter():
    return tiny_qwen2_audio()


@pytest.fixture(scope="session")
def organism():
    from models.loading import load_model

    return load_model("organism", device="cpu")
