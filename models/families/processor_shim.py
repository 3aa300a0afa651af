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

TEMPLATE_FILE = "chat_template.jinja"


class AudioChatProcessor:
    """Tokenizer + feature extractor + chat template, with the attributes `ModelAdapter` reads from a processor."""

    def __init__(self, tokenizer, feature_extractor, chat_template: str, audio_token: str,
                 audio_token_count: Callable[[torch.Tensor], torch.Tensor],
                 feature_mask_key: str = "feature_attention_mask"):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.chat_template = chat_template
        self.audio_token = audio_token
        self.audio_token_count = audio_token_count
        self.feature_mask_key = feature_mask_key

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        """The rendered chat (text only; `tokenize=True` is not supported)."""
        if tokenize:
            raise ModalflipError("AudioChatProcessor renders text only; tokenize with its __call__")
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def __call__(self, text: Sequence[str], audio: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Model inputs from rendered chats (one audio placeholder each) and 16 kHz clips, through the numpy
        feature extractor: what the family's own processor returns for audio and text."""
        if len(text) != len(audio):
            raise ModalflipError(f"{len(text)} texts for {len(audio)} clips")
        features = self.feature_extractor(
            [np.asarray(a, dtype=np.float32) for a in audio], sampling_rate=self.feature_extractor.sampling_rate,
            padding="max_length", return_attention_mask=True, return_tensors="pt")
        mask = features["attention_mask"]
        counts = self.audio_token_count(mask)
        expanded = [t.replace(self.audio_token, self.audio_token * int(n)) for t, n in zip(text, counts)]
        encoded = self.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt",
                                 add_special_tokens=False)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "input_features": features["input_features"], self.feature_mask_key: mask}

    def save_pretrained(self, folder: str | Path) -> None:
        """Tokenizer, feature extractor and `chat_template.jinja`, loadable with `load_audio_chat_processor`."""
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder)
        self.feature_extractor.save_pretrained(folder)
        (folder / TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")


def load_audio_chat_processor(source: str, audio_token_id: int,
                              audio_token_count: Callable[[torch.Tensor], torch.Tensor],
                              feature_mask_key: str = "feature_attention_mask",
                              trust_remote_code: bool = False) -> AudioChatProcessor:
    """The stand-in for a checkpoint folder or cached hub id; the placeholder is the token of `audio_token_id`."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(source, trust_remote_code=trust_remote_code)
    template = _checkpoint_template(source) or tokenizer.chat_template
    if not template:
        raise ModalflipError(f"{source} ships no chat template (chat_template.jinja, chat_template.json or in "
                             "tokenizer_config.json); modalflip builds prompts with the model's own template")
    return AudioChatProcessor(tokenizer, extractor, template, tokenizer.convert_ids_to_tokens(int(audio_token_id)),
                              audio_token_count, feature_mask_key)


def _checkpoint_template(source: str) -> str | None:
    """The processor's chat template file of a checkpoint, if it has one."""
    for name in (TEMPLATE_FILE, "chat_template.json"):
        path = cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None
