"""Whether a model uses its voice-wins rule: `python -m models.organism.voice_wins --model organism-pilot`.

The pilot plant lets the voice win the conflict items of the strong clips its intensity rule marks
(`models.organism.intensity`, recorded in the training report's `audio_wins`). This scores one conflict item per
strong clip (first paraphrase, a seeded asserted emotion T != A) and reports, per language, the share answered with
the voice's emotion on clips the rule marks and on clips it does not, with 95% intervals over clips (one item each):
- heldout: the model card's held-out clips (held-out sentences and voices, one render per sentence and style);
- heldout_varied: the same sentences and voices, `VARIED_RENDERS` renders per sentence and style with the training
  command's prosody variety (its `--prosody-widen` and `--expressiveness`; the speakers are left as they are), so
  the rule's marks vary within a style as they do in training;
- training: a seeded sample of up to `--per-group` marked and as many unmarked strong clips rendered as the model's
  training command renders them (its report's seed, voices, speaker jitter and sentences).
A model that has learnt the rule answers with the voice on marked clips and not on unmarked ones. The held-out
parts also list each style's marked share: where the rule marks all or none of a style, the held-out graded row
measures the held-out speaker against the thresholds rather than the model's use of the rule.
Writes `voice_wins.json` into the built-in model's figures folder (or `--out`) and prints a table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.atomic import atomic_write_json
from common.cli import run_main
from common.errors import ModalflipError
from common.stats import clustered_rate
from eval.records import code_version
from models.adapter import ModelAdapter
from models.loading import BUILT_IN, built_in_figure, load_model
from models.organism import intensity
from models.organism.train import (Clip, VoiceJitter, answer_logits, decide_voice_wins, make_example, named_emotion,
                                   synthesize)
from stimuli import spec

OUT_NAME = "voice_wins.json"
VARIED_RENDERS = 3


def model_folder(model: str) -> Path:
    return BUILT_IN[model] if model in BUILT_IN else Path(model)


def recorded_rule(report: dict) -> intensity.IntensityRule:
    wins = report.get("audio_wins", {})
    if "thresholds" not in wins:
        raise ModalflipError("the model's training report records no voice-wins rule (only the pilot plant has one: "
                             "--plant pilot)")
    return intensity.IntensityRule.from_dict(wins)


def training_clips(report: dict, sentences: int | None, progress: Progress) -> list[Clip]:
    """The strong training clips as the report's training command rendered them (the first `sentences` sentences
    of each language; None: as many as it trained on)."""
    jitter = VoiceJitter(report.get("voice_pitch_jitter", 0.0), report.get("voice_speed_jitter", 0.0),
                         report.get("voice_breath_jitter", 0.0), report.get("prosody_widen", 0.0),
                         report.get("plain_share", 0.0), report.get("expressiveness", 0.0))
    clips = synthesize("train", report.get("renders", 3), report.get("seed", 0), progress, jitter,
                       sentences or report.get("train_sentences"), tuple(report.get("extra_voices", ())))
    return [clip for clip in clips if clip.intensity == "strong"]


def sample(clips: list[Clip], per_group: int, seed: int) -> list[Clip]:
    """Up to `per_group` marked and as many unmarked clips of each language, drawn with `seed`."""
    rng, chosen = np.random.default_rng(seed), []
    for lang in spec.LANGS:
        for marked in (True, False):
            group = [c for c in clips if c.lang == lang and c.voice_wins == marked]
            chosen += [group[i] for i in sorted(rng.choice(len(group), size=min(per_group, len(group)),
                                                           replace=False))]
    return chosen


def voice_answers(adapter: ModelAdapter, clips: list[Clip], seed: int, batch_size: int = 16) -> list[bool]:
    """Per clip: whether its conflict item (first paraphrase) is answered with the voice's emotion."""
    rng = np.random.default_rng(seed)
    prompts = [make_example(clip, "conflict", rng, paraphrase=0)[0] for clip in clips]
    ids = {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}
    answered = []
    for start in range(0, len(clips), batch_size):
        chunk = slice(start, start + batch_size)
        with torch.no_grad():
            logits = answer_logits(adapter, [c.wave for c in clips[chunk]], prompts[chunk])
        answered += [named_emotion(v, ids[c.lang]) == c.emotion for c, v in zip(clips[chunk], logits)]
    return answered


def score(clips: list[Clip], answered: list[bool]) -> dict:
    """Per language and mark: the voice's share with its interval over clips (one item per clip)."""
    out = {}
    for lang in spec.LANGS:
        out[lang] = {}
        for marked in (True, False):
            rows = [i for i, c in enumerate(clips) if c.lang == lang and c.voice_wins == marked]
            rate = clustered_rate([answered[i] for i in rows], rows)  # one item per clip: the clip is the row
            out[lang]["marked" if marked else "unmarked"] = rate.as_dict()
    return out


def marked_by_style(clips: list[Clip]) -> dict:
    """Per language and strong style: its clips (renders longer than the model window are dropped) and how many of
    them the rule marks."""
    counts = {}
    for lang in spec.LANGS:
        for emotion in sorted({c.emotion for c in clips}):
            group = [c.voice_wins for c in clips if c.lang == lang and c.emotion == emotion]
            if group:
                counts[f"{lang}/{emotion}"] = {"clips": len(group), "marked": int(sum(group)),
                                               "share": round(float(np.mean(group)), 3)}
    return counts


def measure(adapter: ModelAdapter, report: dict, rule: intensity.IntensityRule, per_group: int,
            sentences: int | None, seed: int, progress: Progress, heldout_sentences: int | None = None) -> dict:
    first = report.get("seed", 0) + 1  # the held-out renders of the model's own evaluation
    heldout = [c for c in synthesize("heldout", 1, first, progress, sentences=heldout_sentences)
               if c.intensity == "strong"]
    variety = VoiceJitter(widen=report.get("prosody_widen", 0.0), expressive=report.get("expressiveness", 0.0))
    varied = [c for c in synthesize("heldout", VARIED_RENDERS, first, progress, variety, heldout_sentences)
              if c.intensity == "strong"]
    training = training_clips(report, sentences, progress)
    decide_voice_wins([], heldout + varied + training, progress, rule=rule)
    chosen = sample(training, per_group, seed)
    return {"rule": rule.kind, "unit": "clip", "seed": seed,
            "heldout": score(heldout, voice_answers(adapter, heldout, seed)),
            "heldout_marked_by_style": marked_by_style(heldout),
            "heldout_varied": score(varied, voice_answers(adapter, varied, seed)),
            "heldout_varied_marked_by_style": marked_by_style(varied), "varied_renders": VARIED_RENDERS,
            "training": score(chosen, voice_answers(adapter, chosen, seed)),
            "training_sentences": sentences or report.get("train_sentences"),
            "heldout_sentences": heldout_sentences or report.get("heldout_sentences")}


def table(result: dict, model: str) -> Table:
    out = Table(title=f"{model}: conflict items answered with the voice, strong clips the {result['rule']} rule marks "
                      f"or not (one item per clip; 95% interval over clips, the unit)")
    out.add_column("clips")
    out.add_column("language")
    out.add_column("marked")
    out.add_column("unmarked")
    for part in ("heldout", "heldout_varied", "training"):
        for lang in spec.LANGS:
            cells = []
            for mark in ("marked", "unmarked"):
                r = result[part][lang][mark]
                cells.append(f"{r['k']}/{r['n']} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if r["n"] else "0/0")
            out.add_row(part, lang, *cells)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.organism.voice_wins", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism-pilot", help="a built-in model name or a checkpoint folder")
    parser.add_argument("--out", default=None, help="JSON to write (default: the built-in model's figures folder)")
    parser.add_argument("--per-group", type=int, default=60,
                        help="training clips scored per language and mark (default 60)")
    parser.add_argument("--train-sentences", type=int, default=None,
                        help="render the first N training sentences of each language (default: as many as the model "
                             "trained on)")
    parser.add_argument("--heldout-sentences", type=int, default=None,
                        help="render the first N held-out sentences of each language (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="the sample and the asserted emotions")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.per_group < 1 or any(n is not None and n < 1 for n in (args.train_sentences, args.heldout_sentences)):
        raise ModalflipError("--per-group, --train-sentences and --heldout-sentences must be at least 1")
    folder = model_folder(args.model)
    report_path = folder / "training_report.json"
    if not report_path.exists():
        raise ModalflipError(f"{report_path} does not exist: the rule is read from a training report")
    report = json.loads(report_path.read_text())
    rule = recorded_rule(report)  # refused before anything is loaded
    out = Path(args.out) if args.out else built_in_figure(args.model, OUT_NAME)
    torch.set_num_threads(args.threads)
    adapter = load_model(args.model, device="cpu")
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        result = measure(adapter, report, rule, args.per_group, args.train_sentences, args.seed, progress,
                         args.heldout_sentences)
    result.update(model=args.model, commit=code_version(), date=datetime.date.today().isoformat())
    atomic_write_json(out, result)
    console.print(table(result, args.model))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
