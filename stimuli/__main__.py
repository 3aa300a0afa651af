"""`python -m stimuli make|check|import`: render the seed set, check clips' acoustics, import a corpus.

    python -m stimuli make --out DIR [--lang en|zh|both] [--command 'TTS ... {text} ... {out}']
    python -m stimuli check DIR|MANIFEST
    python -m stimuli import ravdess|cremad|esd ROOT --out DIR

Bad input (a missing file, an unknown emotion, unreadable, empty or silent audio, a bad option) is one line on
stderr and exit status 2; `check` exits 1 when an ordering fails.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from rich.console import Console

from common.cli import LANG_CHOICES, languages, run_main
from common.errors import ModalflipError
from stimuli.check import run_check
from stimuli.external import ExternalTTS
from stimuli.importers import IMPORTERS, run_import
from stimuli.make import make_seed_set


class _Parser(argparse.ArgumentParser):
    """Usage errors become a `ModalflipError`, so they too are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise ModalflipError(f"{message} (see: python -m stimuli --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m stimuli",
                     description="Render the seed set, check clips' acoustics, import an emotion corpus.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="make|check|import")

    make = commands.add_parser("make", help="render the seed set A1-A9: OUT/<lang>/<id>.wav and OUT/manifest.jsonl")
    make.add_argument("--out", required=True, help="output folder")
    make.add_argument("--lang", default="both", choices=LANG_CHOICES, help="language(s) to render")
    make.add_argument("--command", dest="tts_command", default=None, metavar="TEMPLATE",
                      help="external TTS command template with {text} {style} {out} {lang} {emotion} {intensity} "
                           "(default: the built-in eSpeak NG backend)")
    make.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per clip for --command")

    check = commands.add_parser("check", help="F0, RMS and duration per clip and the orderings the styles imply")
    check.add_argument("path", help="a folder holding manifest.jsonl, or a manifest file (.jsonl or .csv)")

    imp = commands.add_parser("import", help="write a manifest for a corpus; its audio stays where it is")
    imp.add_argument("corpus", choices=sorted(IMPORTERS), help="which corpus")
    imp.add_argument("root", help="the corpus folder")
    imp.add_argument("--out", required=True, help="folder for manifest.jsonl")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if args.command == "make":
        backend = ExternalTTS(args.tts_command, args.timeout) if args.tts_command else None
        clips = make_seed_set(args.out, languages(args.lang), backend)
        console.print(f"wrote {len(clips)} clips and {Path(args.out) / 'manifest.jsonl'}")
        return 0
    if args.command == "check":
        return run_check(args.path, console)
    run_import(args.corpus, args.root, args.out, console)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
