"""Audio Flamingo 3 (AudioFlamingo3ForConditionalGeneration): Whisper-large-v3-style encoder, Qwen2.5 LM.

It differs most from Qwen2-Audio in how it takes audio: a clip is cut into consecutive 30 s windows (at most
`processor.max_audio_len` seconds, 600 s = 20 windows), each window is one row of `input_features` with its own
mask row under the key `input_features_mask`, and the clip's `<sound>` placeholder is repeated once per audio
token of all its windows together. `models.frontend.log_mel(..., max_windows=...)` builds the same rows.
"""
from __future__ import annotations

from models.families.base import FamilySpec, LANGUAGE_MODEL_PATHS, repeat_placeholder, whisper_pooled_tokens


def processor_windows(processor) -> int:
    """Windows one clip may span: the processor's longest audio over the extractor's window (600 / 30 = 20)."""
    return int(processor.max_audio_len // processor.feature_extractor.chunk_length)


FAMILY = FamilySpec(
    name="Audio Flamingo 3",
    model_types=("audioflamingo3",),
    model_class="AudioFlamingo3ForConditionalGeneration",
    paths=LANGUAGE_MODEL_PATHS,
    audio_token_attr="audio_token_id",
    features_key="input_features",
    feature_mask_key="input_features_mask",
    audio_token_count=whisper_pooled_tokens,
    expand_audio=repeat_placeholder,
    max_windows=processor_windows,
    notes="30 s windows, one feature row each, up to max_audio_len (600 s); <sound> placeholder.",
)
