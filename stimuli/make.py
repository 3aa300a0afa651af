"""Render the seed set (A1-A9 of `spec/seed_set.json`) in each language: `OUT/<lang>/<id>.wav` + `OUT/manifest.jsonl`.

With the built-in eSpeak NG backend the clips are deterministic (no jitter: every prosody value is its range's
midpoint). Every clip is rendered in memory first; only then are the WAVs written, each atomically, and the
manifest last, so a failed run leaves no manifest pointing at missing or stale audio.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.console import Console
from rich.progress import Progress

from stimuli import tts
from stimuli.audio_io import SAMPLE_RATE, write_wav
from stimuli.external import ExternalTTS
from stimuli.manifest import Clip, write_manifest
from stimuli.spec import check_lang, seed_clips, seed_sentence


def make_seed_set(out: str | os.PathLike, langs: Sequence[str] = ("en", "zh"), backend: ExternalTTS | None = None,
                  console: Console | None = None) -> list[Clip]:
    """Render and write the seed set for `langs` with eSpeak NG, or with `backend` when given; returns its clips
    (ids like "A3-en") in manifest order."""
    out = Path(out)
    langs = [check_lang(lang) for lang in langs]
    planned = [(lang, spec) for lang in langs for spec in seed_clips()]
    rendered: list[tuple[Clip, np.ndarray]] = []
    console = console or Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("rendering the seed set", total=len(planned))
        for lang, spec in planned:
            sentence = seed_sentence(lang)
            if backend is None:
                samples = tts.render(sentence, lang, spec.emotion, spec.intensity)
                source = "espeak-ng"
            else:
                samples = backend.render(sentence, lang, spec.emotion, spec.intensity, spec.style)
                source = "external"
            clip_id = f"{spec.id}-{lang}"
            audio = (out / lang / f"{clip_id}.wav").absolute()
            rendered.append((Clip(id=clip_id, path=f"{lang}/{clip_id}.wav", emotion=spec.emotion,
                                  intensity=spec.intensity, lang=lang, sentence=sentence, style=spec.style,
                                  source=source, audio_path=audio), samples))
            progress.advance(task)
    for clip, samples in rendered:
        write_wav(clip.audio_path, samples, SAMPLE_RATE)
    clips = [clip for clip, _ in rendered]
    write_manifest(out / "manifest.jsonl", clips)
    return clips
