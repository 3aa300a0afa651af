"""Qwen2-Audio (Qwen2AudioForConditionalGeneration): Whisper-large-v3 encoder, 128 mels padded to 30 s, Qwen2 LM."""
from models.families.base import FamilySpec, LANGUAGE_MODEL_PATHS, repeat_placeholder, whisper_pooled_tokens

FAMILY = FamilySpec(
    name="Qwen2-Audio",
    model_types=("qwen2_audio",),
    model_class="Qwen2AudioForConditionalGeneration",
    paths=LANGUAGE_MODEL_PATHS,
    audio_token_attr="audio_token_id",
    features_key="input_features",
    feature_mask_key="feature_attention_mask",
    audio_token_count=whisper_pooled_tokens,
    expand_audio=repeat_placeholder,
    notes="Processor pads every clip to the 30 s window; the encoder runs all 3000 frames with a mask.",
)
