"""Hearing beyond the training renderer: `python -m models.organism.unseen --model organism-pilot`.

Renders the clips of `stimuli/spec/prosody_unseen.json`, a second eSpeak NG renderer that no training run uses
(another mapping of the nine styles to pitch, range, rate and volume, without the training renderer's DSP effects,
other sentences, each language's seed voice and its held-out variant; one prosody draw per clip), and measures how a
built-in model hears them: audio-only and voice-instructed accuracy (answer = the voice's emotion A) per language
and intensity, and what it answered for each style (`answers`, the confusion behind the rates). Every clip gives
one item per condition, so the 95% intervals over clips are Wilson intervals (`common.stats.clustered_rate`).
Writes `unseen_renderer.json` into the model's figures folder (or `--out`) and prints a table. `--clips reweighted`
does the same with `stimuli/spec/prosody_reweighted.json` (`reweighted_renderer.json`), a third renderer that weights
the knobs unlike training (pitch and rate carry more of each emotion, pitch range less), a mapping that training's
one-factor `--expressiveness` does not span. `--clips plain`
measures the same on the model card's held-out clips rendered by the training renderer without its effects
(`plain_renders.json`): whether what is misheard on the second renderer is misheard on plain prosody already.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.atomic import atomic_write_json
from common.cli import run_main
from common.stats import clustered_rate
from models.adapter import ModelAdapter
from models.forward import run_traced
from models.loading import built_in_figure, load_model
from models.organism.train import (Clip, VoiceJitter, make_example, named_emotion, render_clips, styles,
                                   synthesize)
from stimuli import spec, tts
from stimuli.spec import SPEC_DIR

SPEC_PATH = SPEC_DIR / "prosody_unseen.json"
RENDERERS = {"unseen": SPEC_PATH, "reweighted": SPEC_DIR / "prosody_reweighted.json"}
CONDITIONS = ("audio_only", "voice")


@lru_cache(maxsize=None)
def renderer(name: str = "unseen") -> dict:
    """A held-out renderer's spec (`RENDERERS`): its styles, voices and sentences."""
    return json.loads(RENDERERS[name].read_text(encoding="utf-8"))


def knob_slopes(name: str) -> dict[str, float]:
    """How the held-out renderer `name` differs from the training one, per knob of `tts.EXPRESSIVE_KNOBS`: the
    least-squares slope of its styles' midpoints on the training styles' midpoints (below 1: the styles lie closer
    together; one slope for all knobs: what training's one-factor `--expressiveness` gives)."""
    train, other = tts.prosody_spec()["styles"], renderer(name)["styles"]
    return {knob: float(np.polyfit([sum(train[style][knob]) / 2 for style in train],
                                   [sum(other[style][knob]) / 2 for style in train], 1)[0])
            for knob in tts.EXPRESSIVE_KNOBS}


def unseen_clips(seed: int = 0, progress: Progress | None = None, name: str = "unseen") -> list[Clip]:
    """Every sentence x style x voice of the held-out renderer `name`, both languages, one seeded prosody draw
    each."""
    table = renderer(name)
    rng = np.random.default_rng((seed, 3))
    jobs = [(sentence, lang, emotion, intensity, voice, int(rng.integers(1 << 30)), tts.VoiceShift())
            for lang in spec.LANGS for voice in table["voices"][lang] for sentence in table["sentences"][lang]
            for emotion, intensity in styles()]
    return render_clips(jobs, f"rendering the {name} renderer's clips", progress or Progress(disable=True),
                        styles=table["styles"])


def plain_clips(seed: int = 0, progress: Progress | None = None) -> list[Clip]:
    """The model cards' held-out clips (other sentences, the held-out voice of each language, drawn as a training
    run of seed `seed` draws them) rendered by the training renderer without the styles' effects (pauses, tremolo,
    vibrato, breath, drive): what eSpeak's pitch, range, rate and volume alone carry of each style."""
    return synthesize("heldout", 1, seed + 1, progress or Progress(disable=True), VoiceJitter(plain=1.0))


@torch.no_grad()
def hearing(adapter: ModelAdapter, clips: list[Clip], seed: int = 0, batch_size: int = 32) -> dict:
    """{lang: {condition: {"all"|"normal"|"strong": RateInterval.as_dict()}}}: the share of items answered with the
    voice's emotion, clustered on the clip (window-long clips are dropped and counted in "dropped")."""
    window = adapter.window_seconds * tts.SAMPLE_RATE
    kept = [c for c in clips if len(c.wave) <= window]
    label_ids = {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}
    rng = np.random.default_rng(seed)
    rows = [(i, clip, condition, make_example(clip, condition, rng, paraphrase=0)[0])
            for i, clip in enumerate(kept) for condition in CONDITIONS]
    answers = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = adapter.build_batch([clip.wave for _, clip, _, _ in chunk], [prompt for *_, prompt in chunk])
        logits = run_traced(adapter, batch, logits_at=batch.answer_positions()).logits
        for (i, clip, condition, _), vector in zip(chunk, logits):
            answers.append((i, clip, condition, named_emotion(vector, label_ids[clip.lang])))
    result = {"dropped": len(clips) - len(kept), "unit": "clip", "answers": answer_counts(answers)}
    for lang in spec.LANGS:
        result[lang] = {}
        for condition in CONDITIONS:
            mine = [(i, clip, answer == clip.emotion) for i, clip, cond, answer in answers
                    if clip.lang == lang and cond == condition]
            cells = {"all": mine, "normal": [m for m in mine if m[1].intensity == "normal"],
                     "strong": [m for m in mine if m[1].intensity == "strong"]}
            result[lang][condition] = {name: clustered_rate([ok for *_, ok in sub], [i for i, *_ in sub]).as_dict()
                                       for name, sub in cells.items()}
    return result


def answer_counts(answers: list[tuple[int, Clip, str, str]]) -> dict:
    """{lang: {condition: {"emotion/intensity": {answer: clips}}}}: what the model answered for each style (the
    confusion behind the rates; one clip is one item per condition)."""
    counts: dict = {}
    for _, clip, condition, answer in answers:
        style = counts.setdefault(clip.lang, {}).setdefault(condition, {}).setdefault(
            f"{clip.emotion}/{clip.intensity}", {})
        style[answer] = style.get(answer, 0) + 1
    return counts


def misreadings(result: dict, lang: str, condition: str = "audio_only", least: float = 0.25) -> list[str]:
    """The styles most often heard as another emotion: 'fearful/strong as happy 11 of 16', every (style, wrong
    answer) that takes at least `least` of the style's clips, the largest first."""
    found = []
    for style, counts in result["answers"][lang][condition].items():
        total = sum(counts.values())
        for answer, n in counts.items():
            if answer != style.split("/")[0] and n >= least * total:
                found.append((n / total, f"{style} as {answer} {n} of {total}"))
    return [text for _, text in sorted(found, key=lambda pair: -pair[0])]


def rate_cell(cell: dict) -> str:
    """'0.78 [0.70, 0.85] (112/144)': a rate of `hearing` with its interval over clips and its counts."""
    return f"{cell['rate']:.2f} [{cell['ci95'][0]:.2f}, {cell['ci95'][1]:.2f}] ({cell['k']}/{cell['n']})"


def hearing_table(result: dict, model: str) -> Table:
    heard = CLIP_SETS[result.get("clips", "unseen")].heard
    table = Table(title=f"{model}: hearing {heard} (answer = the voice's emotion; 95% CI over clips)")
    for column in ("language", "condition", "all", "normal", "strong"):
        table.add_column(column)
    for lang in spec.LANGS:
        for condition in CONDITIONS:
            cells = result[lang][condition]
            table.add_row(lang, condition, *(rate_cell(cells[name]) for name in ("all", "normal", "strong")))
    return table


@dataclass(frozen=True)
class ClipSet:
    """A set of clips `--clips` can name: how it is rendered, the JSON it is written to in a built-in model's figures
    folder, its renderer in words and its title in the table."""
    render: Callable[[int, Progress], list[Clip]]
    out_name: str
    renderer: str
    heard: str


CLIP_SETS = {
    "unseen": ClipSet(unseen_clips, "unseen_renderer.json", str(SPEC_PATH.relative_to(SPEC_DIR.parent.parent)),
                      "the unseen renderer"),
    "reweighted": ClipSet(partial(unseen_clips, name="reweighted"),
                          "reweighted_renderer.json",
                          str(RENDERERS["reweighted"].relative_to(SPEC_DIR.parent.parent)),
                          "the reweighted renderer"),
    "plain": ClipSet(plain_clips, "plain_renders.json",
                     "stimuli/spec/prosody.json without the styles' effects (held-out split)",
                     "plain renders of held-out clips"),
}
OUT_NAMES = {name: clip_set.out_name for name, clip_set in CLIP_SETS.items()}


def default_out(model: str, clips: str = "unseen") -> Path:
    return built_in_figure(model, OUT_NAMES[clips])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.organism.unseen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism", help="a built-in model name or a checkpoint folder")
    parser.add_argument("--out", default=None, help="JSON to write (default: the built-in model's figures folder)")
    parser.add_argument("--clips", choices=tuple(CLIP_SETS), default="unseen",
                        help="unseen: the second renderer's clips; reweighted: the third renderer's (knobs weighted "
                             "unlike training); plain: the model card's held-out clips rendered by the training "
                             "renderer without its effects (written to plain_renders.json)")
    parser.add_argument("--seed", type=int, default=0,
                        help="prosody draws; with --clips plain, the training seed whose held-out split is rendered")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else default_out(args.model, args.clips)
    torch.set_num_threads(args.threads)
    adapter = load_model(args.model, device="cpu")
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        clips = CLIP_SETS[args.clips].render(args.seed, progress)
    result = hearing(adapter, clips, args.seed)
    result.update(model=args.model, renderer=CLIP_SETS[args.clips].renderer, clips=args.clips, seed=args.seed)
    atomic_write_json(out, result)
    console.print(hearing_table(result, args.model))
    for lang in spec.LANGS:
        console.print(f"{lang}, audio-only, misheard: {'; '.join(misreadings(result, lang)) or 'no style often'}")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
