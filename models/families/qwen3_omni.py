"""Qwen3-Omni, thinker only (Qwen3OmniMoeThinkerForConditionalGeneration): a Whisper-style encoder that runs the
mel frames in chunks of 100 (1 s) with three stride-2 convolutions, and a mixture-of-experts Qwen3 LM with
multimodal rope.

- The processor pads a batch's audio only to its longest clip (`padding="longest"`), and the model drops padded
  frames; the front end pads the same way (`feature_padding="longest"`).
- Audio tokens: 13 per full second of mel frames, plus the three convolutions' output for the rest
  (`audio_tokens`): about 13 per second.
- Like Qwen2.5-Omni, its processor also wants an image and a video processor (torchvision), so `load_model` falls
  back to `processor_shim.AudioChatProcessor`; a full checkpoint (model_type `qwen3_omni_moe`, with talker and
  code2wav) loads as its thinker; rope positions are 3-D and the batch carries them explicitly.
- Decoder layers are MoE blocks (a router picks `num_experts_per_tok` experts per token); to the residual stream,
  the lens and patching they are ordinary decoder layers.
"""
from __future__ import annotations

import torch

from models.families.base import FamilySpec, LANGUAGE_MODEL_PATHS, repeat_placeholder
from models.families.qwen2_5_omni import mrope_positions

FRAMES_PER_CHUNK = 100  # mel frames the encoder convolves at a time (2 * n_window, n_window = 50)
TOKENS_PER_CHUNK = 13  # 100 frames after three stride-2 convolutions


def audio_tokens(feature_mask: torch.Tensor) -> torch.Tensor:
    """Audio tokens per row: 13 per full chunk of 100 mel frames, and the three stride-2 convolutions' output
    length for the remaining frames (the encoder's `_get_feat_extract_output_lengths` with n_window 50)."""
    frames = feature_mask.sum(-1)
    rest = (frames % FRAMES_PER_CHUNK - 1) // 2 + 1
    return ((rest - 1) // 2 + 1 - 1) // 2 + 1 + (frames // FRAMES_PER_CHUNK) * TOKENS_PER_CHUNK


FAMILY = FamilySpec(
    name="Qwen3-Omni (thinker)",
    model_types=("qwen3_omni_moe", "qwen3_omni_moe_thinker"),
    model_class="Qwen3OmniMoeThinkerForConditionalGeneration",
    paths=LANGUAGE_MODEL_PATHS,
    audio_token_attr="audio_token_id",
    features_key="input_features",
    feature_mask_key="feature_attention_mask",
    audio_token_count=audio_tokens,
    expand_audio=repeat_placeholder,
    position_ids=mrope_positions,
    processor_shim=True,
    feature_padding="longest",
    notes="Audio padded to the batch's longest clip; about 13 audio tokens per second; MoE decoder; 3-D rope.",
)
