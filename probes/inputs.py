"""Probe inputs: stimulus items with their audio loaded and padded to one duration, and label token ids."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.errors import ModalflipError
from models.adapter import ModelAdapter, Prompt
from models.prompting import chat_prompt, claim_word
from stimuli import spec
from stimuli.audio_io import load_audio
from stimuli.conditions import Item


@dataclass
class ProbeSet:
    """Items with their waveforms (padded to `pad_seconds` unless None) and each language's label token ids."""

    items: list[Item]
    waves: dict[str, np.ndarray]  # clip id -> 16 kHz samples
    label_ids: dict[str, dict[str, int]]  # lang -> emotion -> token id
    pad_seconds: float | None

    def prompt(self, item: Item) -> Prompt:
        return chat_prompt(item.instruction, item.lang,
                           claim_word(item.lang, item.text_emotion) if item.condition != "audio_only" else None)

    def wave(self, clip_id: str) -> torch.Tensor:
        return torch.as_tensor(self.waves[clip_id])


def load_probe_set(adapter: ModelAdapter, items: list[Item], pad: bool = True) -> ProbeSet:
    """Load every clip once; with `pad`, append silence so all clips last as long as the longest one, which makes
    audio spans of different clips align token by token (needed for Patch Audio)."""
    if not items:
        raise ModalflipError("no items to probe: check --lang and the stimulus set")
    waves: dict[str, np.ndarray] = {}
    for item in items:
        if item.clip_id not in waves:
            waves[item.clip_id] = load_audio(item.audio_path, adapter.sampling_rate)
    longest = max(len(w) for w in waves.values())
    window = int(adapter.window_seconds * adapter.sampling_rate)
    if longest > window:
        raise ModalflipError(f"a clip lasts {longest / adapter.sampling_rate:.2f} s, longer than the model's "
                             f"{adapter.window_seconds:.0f} s audio window; trim it first")
    pad_seconds = None
    if pad:
        waves = {k: np.pad(w, (0, longest - len(w))) for k, w in waves.items()}
        pad_seconds = longest / adapter.sampling_rate
    langs = sorted({item.lang for item in items})
    label_ids = {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in langs}
    return ProbeSet(items=items, waves=waves, label_ids=label_ids, pad_seconds=pad_seconds)
