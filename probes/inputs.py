"""Probe inputs: stimulus items with their audio loaded and padded to one fixed duration, and label token ids."""
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

PAD_RULE = "silence appended to every clip up to pad_seconds (default: the model's audio window), whatever the set"


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


def load_probe_set(adapter: ModelAdapter, items: list[Item], pad: bool = True,
                   pad_seconds: float | None = None) -> ProbeSet:
    """Load every clip once; with `pad`, append silence so that every clip lasts `pad_seconds` (default: the model's
    audio window, `adapter.window_seconds`). The length is fixed, not the set's longest clip, so a clip's numbers do
    not depend on which other clips are probed with it; one length for all clips makes the audio spans of different
    clips align token by token (needed for Patch Audio). A clip longer than the pad length is a `ModalflipError`."""
    if not items:
        raise ModalflipError("no items to probe: check --lang and the stimulus set")
    waves: dict[str, np.ndarray] = {}
    for item in items:
        if item.clip_id not in waves:
            waves[item.clip_id] = load_audio(item.audio_path, adapter.sampling_rate)
    rate = adapter.sampling_rate
    longest_id = max(waves, key=lambda k: len(waves[k]))
    longest = len(waves[longest_id])
    if longest > adapter.max_audio_seconds * rate:
        raise ModalflipError(f"clip {longest_id} lasts {longest / rate:.2f} s, longer than the model's "
                             f"{adapter.max_audio_seconds:.0f} s of audio; trim it first")
    if not pad:
        pad_seconds = None
    else:
        pad_seconds = float(adapter.window_seconds if pad_seconds is None else pad_seconds)
        target = int(round(pad_seconds * rate))
        if pad_seconds > adapter.max_audio_seconds:
            raise ModalflipError(f"--pad-to {pad_seconds:g} s exceeds the model's {adapter.max_audio_seconds:g} s "
                                 "of audio; choose a shorter pad length")
        if longest > target:
            raise ModalflipError(f"clip {longest_id} lasts {longest / rate:.2f} s, longer than the pad length "
                                 f"{pad_seconds:g} s: raise --pad-to (at most {adapter.max_audio_seconds:g} s) "
                                 "or trim the clip")
        waves = {k: np.pad(w, (0, target - len(w))) for k, w in waves.items()}
    langs = sorted({item.lang for item in items})
    label_ids = {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in langs}
    return ProbeSet(items=items, waves=waves, label_ids=label_ids, pad_seconds=pad_seconds)
