"""The external-command TTS backend: quoted placeholders, output checked, failures carry the command's stderr."""
from __future__ import annotations

import shlex
import sys

import pytest

from common.errors import ModalflipError
from stimuli.external import ExternalTTS
from stimuli.make import make_seed_set

FAKE_TTS = '''
import sys, numpy as np, soundfile as sf
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
if args["--text"] == "fail":
    sys.exit("fake-tts: no voice for that text")
open(args["--log"], "a", encoding="utf-8").write(args["--text"] + "|" + args["--style"] + "\\n")
t = np.arange(11025) / 22050
tone = 0.3 * np.sin(2 * np.pi * 180 * t)
sf.write(args["--out"], np.stack([tone, tone], axis=1), 22050)
'''


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_tts.py"
    script.write_text(FAKE_TTS, encoding="utf-8")
    log = tmp_path / "log.txt"
    command = (f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} --text {{text}} --style {{style}} "
               f"--log {shlex.quote(str(log))} --out {{out}}")
    return command, log


def test_placeholders_are_shell_quoted_and_the_output_is_16k_mono(fake, capsys):
    command, log = fake
    text = "Don't panic; $(touch pwned) \"now\""
    samples = ExternalTTS(command).render(text, "en", "fearful", "strong", "Screaming, panic")
    assert samples.shape == (8000,)
    assert log.read_text(encoding="utf-8") == f"{text}|Screaming, panic\n"
    assert "resampled 22050 Hz to 16000 Hz" in capsys.readouterr().err


def test_a_failing_command_reports_its_stderr(fake):
    command, _ = fake
    with pytest.raises(ModalflipError, match="exit status 1 .*fake-tts: no voice for that text"):
        ExternalTTS(command).render("fail", "en", "sad", "normal", "")


def test_a_command_that_writes_nothing_is_an_error():
    with pytest.raises(ModalflipError, match="wrote no file"):
        ExternalTTS("echo {text} > /dev/null; true {out}").render("hello", "en", "sad", "normal", "")


@pytest.mark.parametrize("template, message", [
    ("tts {text}", "must contain {out}"),
    ("tts {text} {out} {voice}", "unknown placeholder"),
    ("tts {text} {out} {", "malformed"),
])
def test_bad_templates_are_refused_before_anything_runs(template, message):
    with pytest.raises(ModalflipError, match=message):
        ExternalTTS(template)


def test_make_writes_nothing_when_a_clip_fails(fake, tmp_path):
    """A1-A5 render, A6 (angry) fails: no WAV and no manifest may be left behind."""
    command, log = fake
    with pytest.raises(ModalflipError, match="exit status 3"):
        make_seed_set(tmp_path / "out", ["en"], ExternalTTS(f"case {{emotion}} in angry) exit 3;; esac; {command}"))
    assert len(log.read_text(encoding="utf-8").splitlines()) == 5
    assert not (tmp_path / "out").exists()
