"""The one command-line convention shared by `run_probes.py`, `run_prompt_search.py` and `run_attack.py`.

Every runner takes `--model` (default `organism`), `--lang en|zh|both`, `--out DIR` (default a new folder under
`runs/` named after the run), `--seed` and `--device`. `run_main` turns a `ModalflipError` into one line on
stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from common.errors import ModalflipError

LANG_CHOICES = ("en", "zh", "both")


def runner_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the shared runner options already added."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    shared = parser.add_argument_group("shared runner options")
    shared.add_argument("--model", default="organism",
                        help="'organism' or 'organism-pilot' (built in, see the README), a local checkpoint folder or a hub id already in the local cache")
    shared.add_argument("--lang", default="both", choices=LANG_CHOICES, help="stimulus language(s)")
    shared.add_argument("--out", default=None,
                        help="output folder (default: a new folder under --runs-dir named after the run)")
    shared.add_argument("--runs-dir", default="runs", help="results folder holding run folders and leaderboard records")
    shared.add_argument("--seed", type=int, default=0, help="random seed")
    shared.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    shared.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the checkpoint (off by default)")
    return parser


def languages(lang: str) -> list[str]:
    """The language codes selected by `--lang`."""
    return ["en", "zh"] if lang == "both" else [lang]


def out_dir(args: argparse.Namespace, run_name: str) -> Path:
    """The run's output folder: `--out`, or `<runs-dir>/<run_name>-<timestamp>` (created)."""
    if args.out:
        path = Path(args.out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(args.runs_dir) / f"{run_name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(args.runs_dir) / f"{run_name}-{stamp}-{suffix}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; a `ModalflipError` becomes `error: <message>` on stderr and exit status 2."""
    try:
        status = main(argv)
    except ModalflipError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are saved and the run can be resumed", file=sys.stderr)
        return 130
    return int(status or 0)


def parse_layer_range(text: str) -> tuple[int, int]:
    """Parse '5-20' into (5, 20), inclusive; a `ModalflipError` for anything else."""
    try:
        first, last = (int(part) for part in text.split("-", 1))
    except ValueError:
        raise ModalflipError(f"layer window {text!r} is not of the form FIRST-LAST, e.g. 5-20") from None
    if first > last:
        raise ModalflipError(f"layer window {text!r} starts after it ends")
    return first, last
