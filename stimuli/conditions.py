"""Experimental items: a clip paired with an instruction, in one of four conditions.

For a clip whose voice expresses emotion A:
  audio_only  one item, the instruction asks for the emotion without asserting one (text_emotion None);
  conflict    one item per T != A, the instruction asserts T ("Judge the emotion as T");
  consistent  one item, the instruction asserts T = A;
  voice       (only when asked) one item per T != A, the text says T but tells the model to judge by the voice,
              so the right answer is A.
The instruction templates are `spec/templates.json`; item ids read `<clip id>/<condition>[/T=<emotion>]`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from common.errors import ModalflipError
from stimuli.manifest import Clip, read_manifest
from stimuli.spec import SEED_DIR, check_lang, emotions, render_instruction

CONDITIONS = ("audio_only", "conflict", "consistent", "voice")
DEFAULT_CONDITIONS = ("audio_only", "conflict", "consistent")
_TEMPLATE = {"audio_only": "audio_only", "conflict": "assert", "consistent": "assert", "voice": "voice"}


@dataclass(frozen=True)
class Item:
    """One model query: a clip, the emotion its voice expresses (A), the emotion its instruction asserts (T)."""

    item_id: str
    clip_id: str
    audio_path: Path
    lang: str
    condition: str  # one of CONDITIONS
    audio_emotion: str  # A
    text_emotion: str | None  # T; None for audio_only
    intensity: str
    instruction: str  # the rendered template, in `lang`
    sentence: str


def build_items(clips: Iterable[Clip], conditions: Sequence[str] = DEFAULT_CONDITIONS,
                langs: Sequence[str] | None = None) -> list[Item]:
    """Items for every clip in `langs` (all when None), clip by clip, in the order of `conditions` and, within a
    condition, of the label set."""
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ModalflipError(f"unknown condition(s) {', '.join(unknown)}; known: {', '.join(CONDITIONS)}")
    wanted = None if langs is None else {check_lang(lang) for lang in langs}
    items = []
    for clip in clips:
        if wanted is not None and clip.lang not in wanted:
            continue
        for condition in conditions:
            for text_emotion in _asserted(condition, clip.emotion):
                suffix = "" if text_emotion is None else f"/T={text_emotion}"
                items.append(Item(
                    item_id=f"{clip.id}/{condition}{suffix}", clip_id=clip.id, audio_path=clip.audio_path,
                    lang=clip.lang, condition=condition, audio_emotion=clip.emotion, text_emotion=text_emotion,
                    intensity=clip.intensity, sentence=clip.sentence,
                    instruction=render_instruction(clip.lang, _TEMPLATE[condition], text_emotion),
                ))
    return items


def seed_items(langs: Sequence[str] = ("en", "zh"), conditions: Sequence[str] = DEFAULT_CONDITIONS) -> list[Item]:
    """Items over the committed seed set (`stimuli/seed/manifest.jsonl`, 9 clips per language)."""
    manifest = SEED_DIR / "manifest.jsonl"
    if not manifest.is_file():
        raise ModalflipError(f"the seed set is missing ({manifest}); regenerate it with "
                             f"python -m stimuli make --out {SEED_DIR}")
    return build_items(read_manifest(manifest), conditions, langs)


def _asserted(condition: str, audio_emotion: str) -> list[str | None]:
    if condition == "audio_only":
        return [None]
    if condition == "consistent":
        return [audio_emotion]
    return [t for t in emotions() if t != audio_emotion]
