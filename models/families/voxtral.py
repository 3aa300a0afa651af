"""Voxtral (VoxtralForConditionalGeneration): a Whisper-large-v3-style encoder without a feature mask, four
encoder frames stacked into one audio token, and a Llama LM (Mistral's Ministral / Mistral Small).

- Audio is padded with silence to whole 30 s windows; every window gives 375 audio tokens whatever it holds
  (3000 frames, conv stride 2, 4 frames per token): `audio_tokens` counts windows, not duration.
- modalflip takes clips of one window (30 s): Voxtral's processor computes the log-mel of a longer clip in one
  piece and floors it once, which per-window rows would not match.
- The real processor needs `mistral_common` and the checkpoint's `tekken.json` tokenizer: its chat template is
  mistral-common's, not Jinja. A checkpoint with a Hugging Face tokenizer and a chat template in Voxtral's shape
  (`<s>[INST][BEGIN_AUDIO][AUDIO]...text[/INST]`) loads through `processor_shim.AudioChatProcessor`; for a
  mistral-common-only checkpoint `load_model` stops and says so.
"""
from __future__ import annotations

import torch

from models.families.base import FamilySpec, LANGUAGE_MODEL_PATHS, repeat_placeholder

FRAMES_PER_TOKEN = 8  # conv stride 2, then 4 encoder frames per token (intermediate_size = 4 * d_model)


def audio_tokens(feature_mask: torch.Tensor) -> torch.Tensor:
    """Audio tokens per window row: its frames over 8 (375 for a 30 s window), padding included."""
    rows, frames = feature_mask.shape
    return torch.full((rows,), frames // FRAMES_PER_TOKEN, dtype=torch.long, device=feature_mask.device)


FAMILY = FamilySpec(
    name="Voxtral",
    model_types=("voxtral",),
    model_class="VoxtralForConditionalGeneration",
    paths=LANGUAGE_MODEL_PATHS,
    audio_token_attr="audio_token_id",
    features_key="input_features",
    feature_mask_key=None,
    audio_token_count=audio_tokens,
    expand_audio=repeat_placeholder,
    processor_shim=True,
    always_shim=True,
    notes="30 s windows, 375 audio tokens each whatever the clip's length; no feature mask; tekken tokenizer.",
)
