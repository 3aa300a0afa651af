"""The clip manifest: one row per audio clip with its emotion, intensity, language and sentence.

`manifest.jsonl` holds one JSON object per line:

    {"id": "A3-en", "path": "en/A3-en.wav", "emotion": "happy", "intensity": "strong", "lang": "en",
     "sentence": "...", "style": "...", "source": "espeak-ng"}

`path` is relative to the manifest's folder, or absolute for audio kept elsewhere (imported corpora stay where
they are). `read_manifest` also takes a CSV with columns path, emotion, intensity, language (or lang), id and
optionally sentence, style, source; a missing id becomes the file name without its extension, a missing
intensity "normal". Every row is checked before anything is returned.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from common.atomic import atomic_write_jsonl
from common.errors import ModalflipError
from stimuli.spec import LANGS, SEED_DIR, check_emotion, spec_hash

INTENSITIES = ("normal", "strong")
FIELDS = ("id", "path", "emotion", "intensity", "lang", "sentence", "style", "source")


@dataclass(frozen=True)
class Clip:
    """One audio clip and what it is meant to express; `audio_path` is `path` resolved to an absolute path."""

    id: str
    path: str
    emotion: str
    intensity: str  # "normal" | "strong"
    lang: str  # "en" | "zh"
    sentence: str
    style: str
    source: str
    audio_path: Path


def read_manifest(path: str | os.PathLike) -> list[Clip]:
    """The clips of a JSONL or CSV manifest, in file order; a `ModalflipError` naming the row if any row is bad."""
    path = Path(path)
    if path.is_dir():
        raise ModalflipError(f"{path} is a folder; give the manifest file inside it (e.g. {path / 'manifest.jsonl'})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ModalflipError(f"manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModalflipError(f"cannot read manifest {path}: {err}") from None
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _jsonl_rows(path, text)
    clips, problems, seen = [], [], {}
    for number, row in rows:
        try:
            clip = _clip_from_row(row, path.parent)
            if clip.id in seen:
                raise ModalflipError(f"id {clip.id!r} already used in row {seen[clip.id]}")
            seen[clip.id] = number
            clips.append(clip)
        except ModalflipError as err:
            problems.append(f"{path} row {number}: {err}")
    if problems:
        more = f" ({len(problems) - 1} more rows have problems)" if len(problems) > 1 else ""
        raise ModalflipError(problems[0] + more)
    if not clips:
        raise ModalflipError(f"manifest {path} has no rows")
    return clips


def stimulus_set_hash(manifest: str | os.PathLike | None = None) -> str:
    """A short hash of the spec files, the manifest of the clips used (the committed seed set by default) and the
    bytes of every clip it lists: re-rendered audio under the same manifest is another stimulus set."""
    path = Path(manifest) if manifest else SEED_DIR / "manifest.jsonl"
    digest = hashlib.sha256(spec_hash().encode())
    digest.update(path.read_bytes())
    for clip in read_manifest(path):
        digest.update(clip.audio_path.read_bytes())
    return digest.hexdigest()[:16]


def write_manifest(path: str | os.PathLike, clips: list[Clip]) -> Path:
    """Write `clips` as JSONL, atomically; each path is made relative to the manifest's folder when the audio is
    inside it and absolute otherwise (the clips' own `path` strings are not used). Returns the path."""
    path = Path(path)
    folder = _absolute(path.parent)
    rows = []
    for clip in clips:
        audio = _absolute(clip.audio_path)
        rel = audio.relative_to(folder).as_posix() if audio.is_relative_to(folder) else str(audio)
        rows.append({"id": clip.id, "path": rel, "emotion": clip.emotion, "intensity": clip.intensity,
                     "lang": clip.lang, "sentence": clip.sentence, "style": clip.style, "source": clip.source})
    return atomic_write_jsonl(path, rows)


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ModalflipError(f"{path} row {number}: not valid JSON ({err.msg}); "
                                 "a manifest is JSONL (one object per line) or a .csv file") from None
        if not isinstance(row, dict):
            raise ModalflipError(f"{path} row {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = {name.strip().lower() for name in reader.fieldnames or []}
    missing = [name for name in ("path", "emotion") if name not in columns]
    if "lang" not in columns and "language" not in columns:
        missing.append("language")
    if missing:
        raise ModalflipError(f"{path}: missing column(s) {', '.join(missing)}; "
                             "a CSV manifest needs path, emotion, language and may have intensity, id")
    rows = []
    for row in reader:
        clean = {key.strip().lower(): (value or "").strip() for key, value in row.items() if key is not None}
        if "language" in clean and "lang" not in clean:
            clean["lang"] = clean.pop("language")
        rows.append((reader.line_num, clean))
    return rows


def _clip_from_row(row: dict, folder: Path) -> Clip:
    raw_path = str(row.get("path") or "").strip()
    if not raw_path:
        raise ModalflipError("no path given")
    audio = Path(raw_path) if Path(raw_path).is_absolute() else folder / raw_path
    if not audio.is_file():
        raise ModalflipError(f"audio file {audio} does not exist (paths are relative to the manifest's folder)")
    try:
        emotion = check_emotion(row.get("emotion", ""))
    except ModalflipError as err:
        raise ModalflipError(f"{audio.name}: {err}") from None
    intensity = str(row.get("intensity") or "normal").strip().lower()
    if intensity not in INTENSITIES:
        raise ModalflipError(f"intensity {intensity!r} for {audio} is not one of {', '.join(INTENSITIES)}")
    lang = str(row.get("lang") or "").strip().lower()
    if lang not in LANGS:
        raise ModalflipError(f"language {lang!r} for {audio} is not one of {', '.join(LANGS)}")
    clip_id = str(row.get("id") or "").strip() or audio.stem
    return Clip(id=clip_id, path=raw_path, emotion=emotion, intensity=intensity, lang=lang,
                sentence=str(row.get("sentence") or ""), style=str(row.get("style") or ""),
                source=str(row.get("source") or ""), audio_path=_absolute(audio))


def _absolute(path: Path) -> Path:
    """An absolute path with "." and ".." removed; symbolic links are kept, not followed."""
    return Path(os.path.abspath(path))
