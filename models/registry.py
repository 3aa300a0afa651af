"""Supported families by config `model_type`, and those known but not yet supported (with the reason)."""
from __future__ import annotations

from models.families.audio_flamingo3 import FAMILY as AUDIO_FLAMINGO3
from models.families.base import FamilySpec
from models.families.qwen2_5_omni import FAMILY as QWEN2_5_OMNI
from models.families.qwen2_audio import FAMILY as QWEN2_AUDIO

FAMILIES: dict[str, FamilySpec] = {t: f for f in (QWEN2_AUDIO, QWEN2_5_OMNI, AUDIO_FLAMINGO3) for t in f.model_types}

UNSUPPORTED: dict[str, str] = {
    "voxtral": "its processor needs mistral_common and a tekken.json tokenizer file",
    "qwen3_omni_moe": "thinker not wired yet (features are not padded; audio tokens ≈ 13 per second)",
    "phi4_multimodal": "prompts are built by hand (no chat template for audio); not wired yet",
    "granite_speech": "its feature extractor imports torchaudio, which breaks on CPU torch",
    "gemma3n": "AltUp stacks four residual streams and soft-caps logits; the lens needs its own rules",
}


def register(family: FamilySpec) -> None:
    for model_type in family.model_types:
        FAMILIES[model_type] = family
