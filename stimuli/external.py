"""An external-command TTS backend: any program that can write a WAV file can render the seed set.

The command is a shell command line with placeholders, for example

    my-tts --voice-prompt {style} --text {text} --lang {lang} --output {out}

Placeholders: {text} (the sentence), {style} (the seed set's style prompt), {out} (the WAV file the command must
write), {lang}, {emotion}, {intensity}. Each value is shell-quoted before it is substituted, so write the
placeholders bare, not inside quotes. The command runs through /bin/sh (pipes and redirections work) once per clip;
its output is read with `load_audio`, so any rate or channel count is accepted (with a notice).
"""
from __future__ import annotations

import shlex
import string
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ModalflipError
from stimuli.audio_io import SAMPLE_RATE, load_audio

PLACEHOLDERS = ("text", "style", "out", "lang", "emotion", "intensity")
STDERR_TAIL_CHARS = 300


@dataclass(frozen=True)
class ExternalTTS:
    """A command template (see the module docstring) and a time limit per clip in seconds."""

    command: str
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        check_template(self.command)

    def render(self, text: str, lang: str, emotion: str, intensity: str, style: str) -> np.ndarray:
        """Run the command for one clip; its output as 16 kHz mono float32 samples."""
        with tempfile.TemporaryDirectory(prefix="modalflip-tts-") as tmp:
            out = Path(tmp) / "out.wav"
            values = {"text": text, "style": style, "out": str(out), "lang": lang, "emotion": emotion,
                      "intensity": intensity}
            command = self.command.format(**{key: shlex.quote(value) for key, value in values.items()})
            try:
                result = subprocess.run(command, shell=True, capture_output=True, text=True, errors="replace",
                                        timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise ModalflipError(f"TTS command took longer than {self.timeout_s:g} s for {emotion}/{intensity} "
                                     f"({lang}): {command}") from None
            if result.returncode != 0:
                raise ModalflipError(f"TTS command failed with exit status {result.returncode} for "
                                     f"{emotion}/{intensity} ({lang}): {_tail(result.stderr)}")
            if not out.is_file():
                raise ModalflipError(f"TTS command exited 0 but wrote no file at {{out}} for {emotion}/{intensity} "
                                     f"({lang}); check that it writes to the {{out}} path: {_tail(result.stderr)}")
            try:
                return load_audio(out, SAMPLE_RATE)
            except ModalflipError as err:
                raise ModalflipError(f"TTS command output for {emotion}/{intensity} ({lang}) is unusable: {err}; "
                                     f"its stderr: {_tail(result.stderr)}") from None


def check_template(command: str) -> None:
    """A `ModalflipError` unless `command` names {out} and {text} and no unknown placeholder."""
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(command) if field is not None}
    except ValueError as err:
        raise ModalflipError(f"TTS command template {command!r} is malformed ({err}); "
                             "write a literal brace as {{ or }}") from None
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        raise ModalflipError(f"TTS command template has unknown placeholder(s) {', '.join(unknown)}; "
                             f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    for needed in ("out", "text"):
        if needed not in names:
            raise ModalflipError(f"TTS command template must contain {{{needed}}}")


def _tail(stderr: str) -> str:
    text = " ".join(stderr.split())
    if not text:
        return "(no stderr)"
    return text if len(text) <= STDERR_TAIL_CHARS else "..." + text[-STDERR_TAIL_CHARS:]
