"""What a model family is made of: module paths (abstract name -> attribute path) and small rules for audio tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


def single_window(processor) -> int:
    """Most families take one window per clip (the extractor's `chunk_length`, 30 s for the real checkpoints)."""
    return 1


def extractor_window(processor) -> int:
    """Samples in one feature window: the Whisper extractor's `n_samples` (`chunk_length` seconds)."""
    return int(processor.feature_extractor.n_samples)


LANGUAGE_MODEL_PATHS = {  # the audio-LLM classes that keep their decoder under `model.language_model`
    "layers": "model.language_model.layers",
    "norm": "model.language_model.norm",
    "lm_head": "lm_head",
    "embed": "model.language_model.embed_tokens",
}


@dataclass(frozen=True)
class FamilySpec:
    """A family adapter: data first, a couple of functions where the families really differ."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values it serves
    model_class: str  # transformers class name to load
    paths: dict[str, str]  # "layers" | "norm" | "lm_head" | "embed" -> dotted attribute path from the model
    audio_token_attr: str  # config attribute holding the audio placeholder token id
    features_key: str  # forward kwarg of the log-mel features
    feature_mask_key: str | None  # forward kwarg of the feature attention mask (None: the model takes none)
    audio_token_count: Callable[[torch.Tensor], torch.Tensor]  # feature mask (rows, frames) -> audio tokens per row
    expand_audio: Callable[[str, int, object], str]  # (rendered chat, n tokens, processor) -> expanded text
    notes: str = ""
    # How many feature windows one clip may span (processor -> count); windows are rows of the features.
    max_windows: Callable[[object], int] = single_window
    # Rope positions (3, batch, tokens) the model would derive from the token ids, or None for plain positions.
    # Given explicitly, they keep a forward from `inputs_embeds` (no token ids) positioned as the traced one.
    position_ids: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None
    # Whether a processor that cannot be built (Qwen2.5-Omni's needs torchvision for video) may be replaced by
    # `processor_shim.AudioChatProcessor` (the checkpoint's tokenizer, feature extractor and chat template).
    processor_shim: bool = False
    # Whether the stand-in replaces the family's processor even where that one builds: Voxtral's renders chats
    # only as token ids (through mistral_common), Phi-4's has no template for audio.
    always_shim: bool = False
    # How the processor pads a batch's audio: to the extractor's window ("max_length", most families) or to the
    # longest clip of the batch ("longest", Qwen3-Omni). The front end and the processor stand-in do the same.
    feature_padding: str = "max_length"
    # Samples in one window (processor -> count); the longest clip is `max_windows` of them.
    window_samples: Callable[[object], int] = extractor_window
    # A differentiable front end for an extractor that is not Whisper's: (clips, extractor, device, window samples)
    # -> (features, feature mask); None means `models.frontend.log_mel`.
    features: Callable[[Sequence[torch.Tensor], object, torch.device, int],
                       tuple[torch.Tensor, torch.Tensor]] | None = None
    # Forward kwarg that takes each clip's audio token count (Phi-4's `audio_embed_sizes`), if the model wants one.
    audio_sizes_key: str | None = None
    # A chat template that replaces the checkpoint's (Phi-4 ships none for audio parts); `{{ audio_token }}` is the
    # audio placeholder. Used by the processor stand-in.
    chat_template: str | None = None
    # The stand-in's class when the family's reference input path is not the Whisper one (an `AudioChatProcessor`
    # subclass); None means `AudioChatProcessor`.
    processor_class: type | None = None


def resolve(root: torch.nn.Module, path: str):
    """Follow a dotted attribute path such as 'model.language_model.layers' (or 'audio_config.audio_token_id')."""
    node = root
    for part in path.split("."):
        node = getattr(node, part)
    return node


def whisper_pooled_tokens(feature_mask: torch.Tensor) -> torch.Tensor:
    """Audio tokens of a Whisper encoder with conv stride 2 and an average pool of 2: ((L-1)//2+1-2)//2+1."""
    lengths = feature_mask.sum(-1)
    return ((lengths - 1) // 2 + 1 - 2) // 2 + 1


def repeat_placeholder(text: str, n: int, processor) -> str:
    """Replace the single audio placeholder with n copies of it (what the processor does)."""
    token = processor.audio_token
    if text.count(token) != 1:
        raise ValueError(f"expected one {token} in the rendered chat, found {text.count(token)}")
    return text.replace(token, token * n)
