"""Supported families by config `model_type`, and those known but not yet supported (with the reason)."""
from __future__ import annotations

from models.families.audio_flamingo3 import FAMILY as AUDIO_FLAMINGO3
from models.families.base import FamilySpec
from models.families.phi4_multimodal import FAMILY as PHI4_MULTIMODAL
from models.families.qwen2_5_omni import FAMILY as QWEN2_5_OMNI
from models.families.qwen2_audio import FAMILY as QWEN2_AUDIO
from models.families.qwen3_omni import FAMILY as QWEN3_OMNI
from models.families.voxtral import FAMILY as VOXTRAL

FAMILIES: dict[str, FamilySpec] = {t: f for f in (QWEN2_AUDIO, QWEN2_5_OMNI, AUDIO_FLAMINGO3, QWEN3_OMNI,
                                                  PHI4_MULTIMODAL, VOXTRAL) for t in f.model_types}

UNSUPPORTED: dict[str, str] = {
    "granite_speech": "its feature extractor imports torchaudio, which breaks on CPU torch",
    "gemma3n": ("AltUp carries four residual streams (4, batch, tokens, width) and each decoder layer also takes "
                "per-layer token embeddings positionally; its last layers reuse keys and values stored by earlier "
                "ones; the logits are soft-capped; the traced forward, resume and lens do not model these yet"),
}


def register(family: FamilySpec) -> None:
    for model_type in family.model_types:
        FAMILIES[model_type] = family
