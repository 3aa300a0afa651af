"""Qwen2.5-Omni, thinker only (Qwen2_5OmniThinkerForConditionalGeneration): Whisper-style encoder, 128 mels padded
to 30 s but padded frames dropped inside the model, Qwen2.5 LM with multimodal rope (TMRoPE).

- Its processor also wants an image and a video processor, and the video one needs torchvision (not installable
  beside CPU torch): `load_model` then falls back to `processor_shim.AudioChatProcessor`.
- A full Qwen2.5-Omni checkpoint (model_type `qwen2_5_omni`, with talker and token2wav) loads as its thinker.
- Rope positions are 3-D. For audio without video they are the plain positions on all three axes, but the model
  derives them from the token ids and caches "rope deltas" between calls; the batch carries them explicitly so a
  forward from `inputs_embeds` is positioned exactly like the traced one.
"""
from __future__ import annotations

import torch

from models.families.base import FamilySpec, LANGUAGE_MODEL_PATHS, repeat_placeholder, whisper_pooled_tokens


def mrope_positions(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """(3, batch, tokens) rope positions, computed by the thinker's own `get_rope_index`."""
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"], None, None, inputs["attention_mask"], False, inputs["feature_attention_mask"].sum(-1))
    return positions


FAMILY = FamilySpec(
    name="Qwen2.5-Omni (thinker)",
    model_types=("qwen2_5_omni", "qwen2_5_omni_thinker"),
    model_class="Qwen2_5OmniThinkerForConditionalGeneration",
    paths=LANGUAGE_MODEL_PATHS,
    audio_token_attr="audio_token_id",
    features_key="input_features",
    feature_mask_key="feature_attention_mask",
    audio_token_count=whisper_pooled_tokens,
    expand_audio=repeat_placeholder,
    position_ids=mrope_positions,
    processor_shim=True,
    notes="Processor pads to 30 s; the model drops padded frames. 3-D rope positions; processor needs torchvision.",
)
