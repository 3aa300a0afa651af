"""The persistence window of an attack: the residual layers `--from-layer`..`--target-layer` (0 = embeddings), or
read off the probes of the attacked model with `run_attack.py --window-from PROBES`.

The probe rule, per language, from the logit lens of `run_probes.py`'s summary.json (Δlogit = logit(T) − logit(A)
at the answer position, so the voice's emotion A leads where Δ < 0):
    from = the first residual layer ≥ 1 at which the audio-only curve's 95% interval lies entirely below 0 (the
           voice's emotion is readable at the answer position);
    to   = the conflict curve's largest rise toward T (`probes.logit_lens.largest_rise`: the measured takeover by
           the text; the largest absolute change can be the voice arriving at layer 1).
With several languages the window is the layers where the rule holds in every language: the latest start and the
earliest end. The window is empty, and refused, where the voice becomes readable only after the takeover.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ModalflipError
from probes.logit_lens import largest_rise

SUMMARY = "summary.json"


@dataclass(frozen=True)
class Window:
    """Residual layers first..last (inclusive), how they were chosen ("options": --from-layer/--target-layer or
    their defaults; "probes": `from_probes`), the probes' summary.json and the model hash it was measured on."""

    first: int
    last: int
    rule: str = "options"
    probes: str | None = None
    probes_model_hash: str | None = None

    def as_dict(self) -> dict:
        """The window as metrics.json and the leaderboard record's settings hold it."""
        data = {"from": self.first, "to": self.last, "rule": self.rule}
        return data | ({"probes": self.probes} if self.probes is not None else {})

    def text(self) -> str:
        """'window 18..18 (rule: probes, <path>)' as the run prints it."""
        return f"window {self.first}..{self.last} (rule: {self.rule}" + (f", {self.probes})" if self.probes else ")")

    def check_model(self, model_hash: str) -> None:
        """A `ModalflipError` when the probes were measured on another model than the one attacked."""
        if self.probes_model_hash is not None and self.probes_model_hash != model_hash:
            raise ModalflipError(f"--window-from {self.probes} was measured on model {self.probes_model_hash}, the "
                                 f"attacked model is {model_hash}; run the probes on this model (python "
                                 "run_probes.py --model ... --out DIR) and pass that folder")


def read_summary(path: str | Path) -> tuple[dict, Path]:
    """(the probes' summary, its file) from a run_probes.py output folder or its summary.json; a `ModalflipError`
    when there is none or it holds no logit lens."""
    given = Path(path)
    file = given / SUMMARY if given.is_dir() else given
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict) or not isinstance(summary.get("logit_lens"), dict) or "model_hash" not in summary:
        raise ModalflipError(f"--window-from {path}: no readable probe summary at {file}; give the folder of a "
                             "finished run_probes.py run (python run_probes.py --out DIR) or its summary.json")
    return summary, file


def language_window(curves: dict) -> tuple[int | None, int]:
    """(from, to) of one language's logit-lens curves (`summary["logit_lens"][lang]`): from = the first residual
    layer ≥ 1 whose audio-only 95% interval lies below 0 (None if none does), to = the conflict curve's largest
    rise toward T."""
    high = curves["audio_only"]["high"]
    first = next((layer for layer in range(1, len(high)) if high[layer] < 0), None)
    return first, largest_rise(np.asarray(curves["conflict"]["mean"]))


def from_probes(path: str | Path, langs: list[str]) -> Window:
    """The window the probes at `path` give for `langs` (see the module docstring); a `ModalflipError` when the
    summary lacks a language or a curve, or the window is empty."""
    summary, file = read_summary(path)
    found = {}
    for lang in langs:
        try:
            found[lang] = language_window(summary["logit_lens"][lang])
        except (KeyError, TypeError, IndexError, ValueError):
            raise ModalflipError(f"--window-from {path} has no audio-only and conflict logit lens for {lang!r}; rerun "
                                 f"the probes with --lang {lang} or attack its languages only") from None
    unreadable = [lang for lang, (first, _) in found.items() if first is None]
    if unreadable:
        raise ModalflipError(f"--window-from {path}: the voice's emotion is never readable at the answer position "
                             f"in {', '.join(unreadable)} (no audio-only interval below 0), so the probes give no "
                             "window; set --from-layer and --target-layer instead")
    first = max(first for first, _ in found.values())
    last = min(last for _, last in found.values())
    if first > last:
        each = ", ".join(f"{lang} {a}..{b}" for lang, (a, b) in found.items())
        raise ModalflipError(f"--window-from {path} gives an empty window: per language (voice readable from .. "
                             f"takeover) {each}, so the latest start {first} comes after the earliest end {last}; "
                             "attack one language at a time or set --from-layer and --target-layer")
    return Window(first, last, "probes", str(file), summary["model_hash"])
