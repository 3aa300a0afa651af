"""Manifests for three acted-emotion corpora, read from their file names; the audio stays where it is.

Each importer walks a corpus folder for .wav files and returns `(clips, skipped)`: the clips whose emotion is in
the label set (`spec/labels.json`), with absolute audio paths, and how many files were skipped and why (keyed by
the corpus's own emotion name, e.g. "calm", or by "song" / "unrecognised name" / "unknown speaker"). Emotions
outside the label set are skipped and counted, never relabelled. File names are trusted; the audio itself is
checked when it is loaded (`load_audio`: RAVDESS is 48 kHz and is resampled then, with a notice).

RAVDESS  Actor_12/03-01-06-01-02-01-12.wav = modality-channel-emotion-intensity-statement-repetition-actor.
         Emotion 01 neutral, 02 calm (skipped), 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust (skipped),
         08 surprised (skipped); intensity 01 normal, 02 strong; channel 02 (song) is skipped; English.
CREMA-D  AudioWAV/1001_DFA_ANG_XX.wav = actor_sentence_emotion_level. Emotion ANG angry, FEA fearful, HAP happy,
         NEU neutral, SAD sad, DIS disgust (skipped). Level LO (low) and MD (medium) -> normal, HI (high) ->
         strong, XX (unspecified) -> normal: only HI is as marked as our "strong" styles. English.
ESD      <speaker>/<Emotion>/[<split>/]<speaker>_<n>.wav; Emotion Angry, Happy, Neutral, Sad, Surprise
         (skipped); speakers 0001-0010 Mandarin (zh), 0011-0020 English (en); intensity normal. Sentences come
         from <speaker>/<speaker>.txt when present (tab-separated id and text), else are left empty.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from common.errors import ModalflipError
from stimuli.manifest import Clip, write_manifest
from stimuli.spec import emotions

RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
                    "07": "disgust", "08": "surprised"}
RAVDESS_INTENSITIES = {"01": "normal", "02": "strong"}
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}

CREMAD_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral",
                   "SAD": "sad"}
CREMAD_LEVELS = {"LO": "normal", "MD": "normal", "HI": "strong", "XX": "normal"}
CREMAD_SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}

ESD_EMOTIONS = {"angry": "angry", "happy": "happy", "neutral": "neutral", "sad": "sad", "surprise": "surprise"}

_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_CREMAD_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_ESD_NAME = re.compile(r"^(\d{4})_(\d+)$")

Importer = Callable[[str | os.PathLike], tuple[list[Clip], dict[str, int]]]


def import_ravdess(root: str | os.PathLike) -> tuple[list[Clip], dict[str, int]]:
    """RAVDESS speech clips under `root`; returns (clips, skipped counts)."""
    clips, skipped = [], Counter()
    for wav in _wav_files(root, "RAVDESS"):
        match = _RAVDESS_NAME.match(wav.stem)
        if not match or match[3] not in RAVDESS_EMOTIONS or match[4] not in RAVDESS_INTENSITIES \
                or match[5] not in RAVDESS_STATEMENTS:
            skipped["unrecognised name"] += 1
            continue
        _modality, channel, emotion_code, intensity_code, statement, _repetition, _actor = match.groups()
        emotion = RAVDESS_EMOTIONS[emotion_code]
        if channel != "01":
            skipped["song"] += 1
        elif emotion not in emotions():
            skipped[emotion] += 1
        else:
            clips.append(_clip(f"ravdess-{wav.stem}", wav, emotion, RAVDESS_INTENSITIES[intensity_code], "en",
                               RAVDESS_STATEMENTS[statement], "ravdess"))
    return _result(clips, skipped, root, "RAVDESS", "03-01-06-01-02-01-12.wav")


def import_cremad(root: str | os.PathLike) -> tuple[list[Clip], dict[str, int]]:
    """CREMA-D clips under `root` (levels mapped as in the module docstring); returns (clips, skipped counts)."""
    clips, skipped = [], Counter()
    for wav in _wav_files(root, "CREMA-D"):
        match = _CREMAD_NAME.match(wav.stem)
        if not match or match[2] not in CREMAD_SENTENCES or match[3] not in CREMAD_EMOTIONS \
                or match[4] not in CREMAD_LEVELS:
            skipped["unrecognised name"] += 1
            continue
        _actor, sentence, emotion_code, level = match.groups()
        emotion = CREMAD_EMOTIONS[emotion_code]
        if emotion not in emotions():
            skipped[emotion] += 1
        else:
            clips.append(_clip(f"cremad-{wav.stem}", wav, emotion, CREMAD_LEVELS[level], "en",
                               CREMAD_SENTENCES[sentence], "cremad"))
    return _result(clips, skipped, root, "CREMA-D", "1001_DFA_ANG_XX.wav")


def import_esd(root: str | os.PathLike) -> tuple[list[Clip], dict[str, int]]:
    """ESD clips under `root` (Mandarin and English speakers); returns (clips, skipped counts)."""
    clips, skipped = [], Counter()
    transcripts: dict[str, dict[str, str]] = {}
    root_path = Path(root).absolute()
    for wav in _wav_files(root, "ESD"):
        match = _ESD_NAME.match(wav.stem)
        folders = [part.lower() for part in wav.relative_to(root_path).parts[:-1]]
        emotion_folder = next((name for name in reversed(folders) if name in ESD_EMOTIONS), None)
        if not match or emotion_folder is None:
            skipped["unrecognised name"] += 1
            continue
        speaker = int(match[1])
        lang = "zh" if 1 <= speaker <= 10 else "en" if 11 <= speaker <= 20 else None
        emotion = ESD_EMOTIONS[emotion_folder]
        if lang is None:
            skipped["unknown speaker"] += 1
        elif emotion not in emotions():
            skipped[emotion] += 1
        else:
            if match[1] not in transcripts:
                transcripts[match[1]] = _esd_transcript(wav, match[1])
            clips.append(_clip(f"esd-{wav.stem}", wav, emotion, "normal", lang,
                               transcripts[match[1]].get(wav.stem, ""), "esd"))
    return _result(clips, skipped, root, "ESD", "0011/Angry/train/0011_000351.wav")


IMPORTERS: dict[str, Importer] = {"ravdess": import_ravdess, "cremad": import_cremad, "esd": import_esd}


def run_import(corpus: str, root: str | os.PathLike, out: str | os.PathLike,
               console: Console | None = None) -> list[Clip]:
    """Import `corpus` from `root`, write `out/manifest.jsonl` (absolute audio paths unless the audio is inside
    `out`) and print the counts per language, emotion and intensity and the skipped files; returns the clips."""
    if corpus not in IMPORTERS:
        raise ModalflipError(f"unknown corpus {corpus!r}; known: {', '.join(sorted(IMPORTERS))}")
    clips, skipped = IMPORTERS[corpus](root)
    manifest = write_manifest(Path(out) / "manifest.jsonl", clips)
    counts = Counter((clip.lang, clip.emotion, clip.intensity) for clip in clips)
    table = Table(title=f"{corpus}: {len(clips)} clips", caption=f"manifest: {manifest}")
    for name in ("lang", "emotion", "intensity", "clips"):
        table.add_column(name, justify="right" if name == "clips" else "left")
    order = {emotion: i for i, emotion in enumerate(emotions())}
    for (lang, emotion, intensity), n in sorted(counts.items(), key=lambda kv: (kv[0][0], order[kv[0][1]], kv[0][2])):
        table.add_row(lang, emotion, intensity, str(n))
    for reason, n in skipped.items():
        table.add_row("", f"[yellow]skipped: {reason}[/]", "", f"[yellow]{n}[/]")
    (console or Console()).print(table)
    return clips


def _wav_files(root: str | os.PathLike, corpus: str) -> list[Path]:
    root = Path(root).absolute()
    if not root.is_dir():
        raise ModalflipError(f"{corpus} folder {root} does not exist or is not a folder")
    return sorted(path for path in root.rglob("*") if path.suffix.lower() == ".wav" and path.is_file())


def _clip(clip_id: str, wav: Path, emotion: str, intensity: str, lang: str, sentence: str, source: str) -> Clip:
    return Clip(id=clip_id, path=str(wav), emotion=emotion, intensity=intensity, lang=lang, sentence=sentence,
                style="", source=source, audio_path=wav)


def _result(clips: list[Clip], skipped: Counter, root: str | os.PathLike, corpus: str,
            example: str) -> tuple[list[Clip], dict[str, int]]:
    if not clips:
        found = f"; skipped {dict(skipped)}" if skipped else ""
        raise ModalflipError(f"no usable {corpus} clips under {root}{found}; "
                             f"expected .wav files named like {example}")
    first: dict[str, Path] = {}
    for clip in clips:
        if clip.id in first:
            raise ModalflipError(f"{corpus} clip {clip.audio_path.name} appears twice under {root} "
                                 f"({first[clip.id].parent} and {clip.audio_path.parent}); import one copy")
        first[clip.id] = clip.audio_path
    return clips, dict(sorted(skipped.items()))


def _esd_transcript(wav: Path, speaker: str) -> dict[str, str]:
    """Utterance id -> sentence from the speaker's <speaker>.txt (searched upwards from the clip), else {}."""
    for folder in wav.parents:
        text_file = folder / f"{speaker}.txt"
        if text_file.is_file():
            raw = text_file.read_bytes()
            encodings = ("utf-16",) if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8-sig", "gb18030")
            for encoding in encodings:
                try:
                    text = raw.decode(encoding)
                    break
                except UnicodeDecodeError:
                    continue
            else:
                return {}
            rows = (line.split("\t") for line in text.splitlines())
            return {row[0].strip(): row[1].strip() for row in rows if len(row) >= 2}
        if folder.name == speaker:
            break
    return {}
