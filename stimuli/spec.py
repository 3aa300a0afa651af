"""Readers for the versioned data files in `stimuli/spec/`: the seed set, label words and instruction templates."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from common.errors import ModalflipError

SPEC_DIR = Path(__file__).parent / "spec"
SEED_DIR = Path(__file__).parent / "seed"  # the committed, generated seed set (manifest.jsonl + WAVs)
LANGS = ("en", "zh")


@dataclass(frozen=True)
class ClipSpec:
    """One row of the seed set: an emotion at an intensity with the style prompt meant for a TTS."""

    id: str
    emotion: str
    intensity: str  # "normal" | "strong"
    style: str
    percept: str


@lru_cache(maxsize=None)
def _load(name: str) -> dict:
    return json.loads((SPEC_DIR / name).read_text(encoding="utf-8"))


def seed_clips() -> list[ClipSpec]:
    return [ClipSpec(**row) for row in _load("seed_set.json")["clips"]]


def seed_sentence(lang: str) -> str:
    return _load("seed_set.json")["sentences"][check_lang(lang)]


def emotions() -> list[str]:
    """The label set, in its fixed order (the index used everywhere for class ids)."""
    return list(_load("labels.json")["emotions"])


def check_emotion(name: str) -> str:
    """Return the canonical emotion name, or raise a `ModalflipError` naming the known ones."""
    key = str(name).strip().lower()
    if key not in emotions():
        raise ModalflipError(f"unknown emotion {name!r}; known emotions: {', '.join(emotions())}")
    return key


def check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise ModalflipError(f"unknown language {lang!r}; known languages: {', '.join(LANGS)}")
    return lang


def label_words(lang: str) -> dict[str, str]:
    """Emotion name -> the word a model should answer in `lang`."""
    return dict(_load("labels.json")["words"][check_lang(lang)])


def label_list(lang: str) -> str:
    """The label words as a list in running text, e.g. 'neutral, happy, sad, angry or fearful'."""
    words = list(label_words(lang).values())
    style = _load("templates.json")["label_list"][lang]
    return style["sep"].join(words[:-1]) + style["last"] + words[-1]


def template(lang: str, kind: str) -> str:
    """The instruction template of `kind` ('audio_only', 'assert', 'voice') in `lang`."""
    return _load("templates.json")["templates"][check_lang(lang)][kind]


def system_prompt(lang: str) -> str:
    return _load("templates.json")["system"][check_lang(lang)]


def render_instruction(lang: str, kind: str, text_emotion: str | None = None) -> str:
    """Fill a template with the asserted emotion's label word and the label list."""
    word = label_words(lang)[text_emotion] if text_emotion else ""
    return template(lang, kind).format(T=word, labels=label_list(lang))


def spec_hash() -> str:
    """A short hash of the spec files (seed set, labels, templates): ties results to the stimulus definition."""
    digest = hashlib.sha256()
    for name in ("seed_set.json", "labels.json", "templates.json"):
        digest.update((SPEC_DIR / name).read_bytes())
    return digest.hexdigest()[:16]
