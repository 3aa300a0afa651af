"""A processor stand-in for families whose HF processor cannot be built here.

`Qwen2_5OmniProcessor` insists on an image and a video processor, and the video one needs torchvision, which cannot
be installed beside the CPU torch build. Audio prompts need only the tokenizer, the feature extractor and the chat
template, so `AudioChatProcessor` holds those three and does the audio half of the processor's `__call__` the way
the real one does (features padded to the window, the placeholder repeated once per audio token, left padding).
`ModelAdapter` uses it like a processor; its `__call__` is the reference path the adapter's batches are tested
against.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import transformers
from transformers.utils import cached_file

from common.errors import ModalflipError
from models.families.base import FamilySpec, resolve

TEMPLATE_FILE = "chat_template.jinja"


class AudioChatProcessor:
    """Tokenizer + feature extractor + chat template, with the attributes `ModelAdapter` reads from a processor."""

    def __init__(self, tokenizer, feature_extractor, chat_template: str, audio_token: str,
                 audio_token_count: Callable[[torch.Tensor], torch.Tensor],
                 feature_mask_key: str = "feature_attention_mask", feature_padding: str = "max_length"):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.chat_template = chat_template
        self.audio_token = audio_token
        self.audio_token_count = audio_token_count
        self.feature_mask_key = feature_mask_key
        self.feature_padding = feature_padding  # "max_length" (the window) or "longest" (the batch's longest clip)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        """The rendered chat (text only; `tokenize=True` is not supported)."""
        if tokenize:
            raise ModalflipError("AudioChatProcessor renders text only; tokenize with its __call__")
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  audio_token=self.audio_token)

    def __call__(self, text: Sequence[str], audio: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Model inputs from rendered chats (one audio placeholder each) and 16 kHz clips, through the numpy
        feature extractor padded as `feature_padding` says: what the family's own processor returns for audio and
        text."""
        if len(text) != len(audio):
            raise ModalflipError(f"{len(text)} texts for {len(audio)} clips")
        features = self.feature_extractor(
            [np.asarray(a, dtype=np.float32) for a in audio], sampling_rate=self.feature_extractor.sampling_rate,
            padding=self.feature_padding, return_attention_mask=True, return_tensors="pt")
        mask = features["attention_mask"]
        counts = self.audio_token_count(mask)
        expanded = [t.replace(self.audio_token, self.audio_token * int(n)) for t, n in zip(text, counts)]
        encoded = self.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt",
                                 add_special_tokens=False)
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                  "input_features": features["input_features"]}
        if self.feature_mask_key is not None:
            inputs[self.feature_mask_key] = mask
        return inputs

    def save_pretrained(self, folder: str | Path) -> None:
        """Tokenizer, feature extractor and `chat_template.jinja`, loadable with `load_audio_chat_processor`."""
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder)
        self.feature_extractor.save_pretrained(folder)
        (folder / TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")


def load_audio_chat_processor(source: str, config, family: FamilySpec,
                              trust_remote_code: bool = False) -> AudioChatProcessor:
    """The stand-in for a checkpoint folder or cached hub id of `family`; the placeholder is the token of the
    config's audio token id; the template is the family's own where it has one (Phi-4), else the checkpoint's."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ImportError as err:  # Voxtral's tekken tokenizer needs mistral_common
        raise ModalflipError(f"the {family.name} tokenizer of {source} cannot be built here "
                             f"({str(err).splitlines()[0]})") from None
    extractor = transformers.AutoFeatureExtractor.from_pretrained(source, trust_remote_code=trust_remote_code)
    template = family.chat_template or _checkpoint_template(source) or tokenizer.chat_template
    if not template:
        raise ModalflipError(f"{source} ships no chat template (chat_template.jinja, chat_template.json or in "
                             "tokenizer_config.json); modalflip builds prompts with the model's own template")
    audio_token = tokenizer.convert_ids_to_tokens(int(resolve(config, family.audio_token_attr)))
    stand_in = family.processor_class or AudioChatProcessor
    return stand_in(tokenizer, extractor, template, audio_token, family.audio_token_count, family.feature_mask_key,
                    family.feature_padding)


def _checkpoint_template(source: str) -> str | None:
    """The processor's chat template file of a checkpoint, if it has one."""
    for name in (TEMPLATE_FILE, "chat_template.json"):
        path = cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None
