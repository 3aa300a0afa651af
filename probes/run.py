"""`run_probes.py`: the logit lens and Patch Text vs Patch Audio on a model, with figures, tables and records."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.atomic import atomic_write_json, atomic_write_jsonl
from common.backoff import with_oom_backoff
from common.cli import languages, out_dir, runner_parser
from common.errors import ModalflipError
from eval.baselines import BaselineRun, baseline_records
from eval.records import DEFAULT_WINDOW, write_record
from models.adapter import ModelAdapter
from models.generate import DEFAULT_NEW_TOKENS
from models.loading import load_model, model_hash
from probes import answers as probe_answers
from probes import logit_lens, patching
from probes.figures import lens_figure, patching_figure
from probes.inputs import PAD_RULE, ProbeSet, load_probe_set
from stimuli import spec
from stimuli.conditions import build_items, seed_items
from stimuli.manifest import read_manifest, stimulus_set_hash

CONDITIONS = ("audio_only", "conflict", "consistent", "voice")
DELTA = "Δlogit = logit(T) − logit(A)"


def parser() -> argparse.ArgumentParser:
    p = runner_parser("run_probes.py", "Logit lens and Patch Text vs Patch Audio per layer, with figures.")
    p.add_argument("--stimuli", help="a manifest (JSONL/CSV) of your own clips; default: the committed seed set")
    p.add_argument("--text-mode", choices=("instruction", "claim"), default="instruction",
                   help="Patch Text copies the whole instruction span or only the asserted emotion word")
    p.add_argument("--window", type=int, default=1, help="patch layers l..l+window-1 together (1 = single layer)")
    p.add_argument("--pad-to", type=float, default=None, metavar="SECONDS",
                   help="pad every clip with silence to this duration (default: the model's audio window), so a "
                        "clip's numbers do not depend on the other clips of the run")
    p.add_argument("--no-pad", action="store_true",
                   help="do not pad clips to one duration (Patch Audio then refuses misaligned pairs)")
    p.add_argument("--answer", choices=probe_answers.READOUTS, default="label",
                   help="how answers, flips and baselines are read: 'label' = argmax over the label tokens at the "
                        "answer position; 'generate' = greedy decoding parsed to the first label word")
    p.add_argument("--new-tokens", type=int, default=DEFAULT_NEW_TOKENS,
                   help="tokens decoded per item with --answer generate")
    p.add_argument("--batch-size", type=int, default=16,
                   help="lens (and --answer generate) items per forward; halved on out-of-memory")
    p.add_argument("--patch-batch", type=int, default=patching.PatchConfig.batch_pairs,
                   help="patching pairs per forward (a sweep holds pairs x layers rows); halved on out-of-memory")
    p.add_argument("--n-boot", type=int, default=1000, help="cluster-bootstrap resamples")
    p.add_argument("--naive", action="store_true", help="patch with a full forward per layer (slow reference path)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.no_pad and args.pad_to is not None:
        raise ModalflipError("--pad-to and --no-pad exclude each other: choose one")
    console = Console()
    started = time.time()
    torch.manual_seed(args.seed)
    langs = languages(args.lang)
    if args.stimuli:
        items = build_items(read_manifest(args.stimuli), CONDITIONS, langs)
    else:
        items = seed_items(langs, CONDITIONS)
    adapter = load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    probe_set = load_probe_set(adapter, items, pad=not args.no_pad, pad_seconds=args.pad_to)
    out = out_dir(args, "probes")
    lens_config = logit_lens.LensConfig(batch_size=args.batch_size, n_boot=args.n_boot, seed=args.seed)
    patch_config = patching.PatchConfig(text_mode=args.text_mode, window=args.window, naive=args.naive,
                                        batch_pairs=args.patch_batch, n_boot=args.n_boot, seed=args.seed)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        lens, patch, answers = probe(adapter, probe_set, lens_config, patch_config, args.answer, args.new_tokens,
                                     progress, console.print)
    seconds = time.time() - started
    stimulus_hash = stimulus_set_hash(args.stimuli)
    organism = getattr(adapter.model.config, "modalflip_organism", None) or {}
    # the pilot organism's K is a training target (full attention everywhere), not a planted architecture
    trained = organism.get("plant") == "pilot"
    takeover = None if trained else organism.get("takeover_layer")
    answer_rows = probe_answers.item_rows(items, answers, lens.top1_is_label, lens.label_mass)
    summary = dict(
        model_id=args.model, model_hash=model_hash(adapter), n_layers=adapter.n_layers,
        stimulus_hash=stimulus_hash, stimuli=args.stimuli or "seed set", langs=langs,
        pad_seconds=probe_set.pad_seconds, pad_rule=PAD_RULE if probe_set.pad_seconds else "not padded (--no-pad)",
        seconds=round(seconds, 1), delta=DELTA,
        planted_takeover=None if takeover is None else dict(decoder_layer=takeover, residual_layer=takeover + 1),
        trained_takeover=trained_takeover(organism) if trained else None,
        answer=answers.settings(), batch_sizes=dict(lens=lens_config.batch_size, patch=patch_config.batch_pairs),
        logit_lens=lens.summary, patching=patch.summary,
        accuracy=probe_answers.summarize(answer_rows, CONDITIONS, n_boot=args.n_boot, seed=args.seed),
    )
    atomic_write_jsonl(out / "items.jsonl", [dict(probe="answer", **r) for r in answer_rows]
                       + [dict(probe="lens", **r) for r in lens.readings]
                       + [dict(probe=f"patch_{r['kind']}", **r) for r in patch.pairs])
    lens_figure(lens.summary, args.model, out / "logit_lens.png")
    patching_figure(patch.summary, args.model, out / "patching.png")
    atomic_write_json(out / "summary.json", summary)
    for lang in langs:
        for record in _baselines(items, lens, answers, lang, args, adapter, summary["model_hash"], stimulus_hash,
                                 out, seconds):
            write_record(record, args.runs_dir)
    _print_tables(console, summary, out)
    return 0


def probe(adapter: ModelAdapter, probe_set: ProbeSet, lens_config: logit_lens.LensConfig,
          patch_config: patching.PatchConfig, readout: str, new_tokens: int, progress: Progress,
          say: Callable[[str], None]) -> tuple[logit_lens.LensResult, patching.PatchResult, probe_answers.Answers]:
    """The logit lens, the answers under `readout` and the patching sweeps, each retried with half its batch after
    a CUDA out-of-memory error (the configs are updated to the batch sizes that ran)."""
    items = probe_set.items

    def task(description: str, total: int) -> Callable[[int], Callable[[int], None]]:
        task_id = progress.add_task(description, total=total)

        def start(size: int) -> Callable[[int], None]:
            progress.reset(task_id, total=total, description=f"{description}, {size} per forward")
            return lambda n: progress.advance(task_id, n)
        return start

    lens_task = task("logit lens (items)", len(items))
    lens, lens_config.batch_size = with_oom_backoff(
        lambda size: logit_lens.run(adapter, probe_set, dataclasses.replace(lens_config, batch_size=size),
                                    lens_task(size)),
        lens_config.batch_size, "lens items per forward", say)
    if readout == "generate":
        answer_task = task("answers (greedy decoding)", len(items))
        answers, _ = with_oom_backoff(
            lambda size: probe_answers.read_answers(adapter, probe_set, lens.final_logits, readout, new_tokens,
                                                    size, answer_task(size)),
            lens_config.batch_size, "prompts per generate call", say)
    else:
        answers = probe_answers.read_answers(adapter, probe_set, lens.final_logits, readout)
    patch_task = task("patching (pairs)", len(patching.make_pairs(items)))
    patch, patch_config.batch_pairs = with_oom_backoff(
        lambda size: patching.run(adapter, probe_set, lens.final_logits,
                                  dataclasses.replace(patch_config, batch_pairs=size), patch_task(size)),
        patch_config.batch_pairs, "patching pairs per forward", say)
    return lens, patch, answers


def _baselines(items, lens, answers: probe_answers.Answers, lang, args, adapter, fingerprint: str,
               stimulus_hash: str, out: Path, seconds: float):
    """The conflict prompt and the judge-by-the-voice prompt as leaderboard baselines (flip = answer is A). Their
    items carry `clip_id` and `text_emotion`, so a judge-by-voice item pairs with the conflict item of the same clip
    and claim; `delta_last` (per item, and per record as the shift from the conflict prompt) is Δlogit =
    logit(T) − logit(A), negative = toward the voice."""
    emotions = spec.emotions()
    first, last = DEFAULT_WINDOW

    def run_of(condition: str) -> tuple[list[dict], np.ndarray]:
        group = [i for i in items if i.lang == lang and i.condition == condition]
        outcomes, deltas = [], []
        for i in group:
            curve = lens.label_logits[i.item_id]
            a, t = emotions.index(i.audio_emotion), emotions.index(i.text_emotion)
            delta = curve[:, t] - curve[:, a]  # (n_layers + 1,) Δlogit per layer
            deltas.append(delta)
            answer = answers.answer[i.item_id]
            outcomes.append(dict(item_id=i.item_id, clip_id=i.clip_id, text_emotion=i.text_emotion,
                                 flipped=answer == i.audio_emotion, answer=answer,
                                 delta_last=round(float(delta[-1]), 4)))
        return outcomes, np.array(deltas)

    conflict_items, conflict_delta = run_of("conflict")
    voice_items, voice_delta = run_of("voice")
    if not conflict_items or not voice_items:
        return []
    window = slice(first, min(last, adapter.n_layers) + 1)
    shift_last = float(voice_delta[:, -1].mean() - conflict_delta[:, -1].mean())
    shift_window = float(voice_delta[:, window].mean() - conflict_delta[:, window].mean())
    figures = ["logit_lens.png", "patching.png"]
    per = seconds / max(1, len(items))
    readout = answers.settings()
    return baseline_records(
        conflict=BaselineRun(items=conflict_items, settings={"template": "assert", "answer": readout},
                             seconds=per * len(conflict_items), queries=len(conflict_items), figures=figures),
        judge_by_voice=BaselineRun(items=voice_items, settings={"template": "voice", "answer": readout},
                                   delta_last=shift_last, delta_window=shift_window, seconds=per * len(voice_items),
                                   queries=len(voice_items), figures=figures),
        model_id=args.model, model_hash=fingerprint, stimulus_hash=stimulus_hash, lang=lang,
        seed=args.seed, artifacts=out)


def _print_tables(console: Console, summary: dict, out: Path) -> None:
    lens_table = Table(title=f"Logit lens: {DELTA} at the answer position (mean over readings; 95% cluster "
                             "bootstrap over clips)")
    for column in ("lang", "condition", "readings (clips)", "Δ at layer 0", "Δ at last layer",
                   "critical layer (mean curve)", "per-item critical layer [95% CI]", "sign settles"):
        lens_table.add_column(column)
    for lang in summary["langs"]:
        for condition, curve in summary["logit_lens"].get(lang, {}).items():
            items = curve["critical_layer_items"]
            lens_table.add_row(lang, condition, f"{curve['n_readings']} ({curve['n_clips']} clips)",
                               f"{curve['mean'][0]:+.2f}", f"{curve['mean'][-1]:+.2f}", str(curve["critical_layer"]),
                               f"{items['mean']:.1f} [{items['low']:.1f}, {items['high']:.1f}]",
                               str(curve["sign_settles"]))
    console.print(lens_table)
    patch_table = Table(title="Activation patching: flip = the label answer moves to T; LD = " + DELTA
                        + "; 95% cluster bootstrap over the receivers' clips")
    for column in ("lang", "patch (receiver)", "pairs (clips)", "max flip rate [95% CI] (layer)",
                   "layers flipping ≥ 50%", "max effect (layer)"):
        patch_table.add_column(column)
    layers = summary["patching"]["layers"]
    receivers = {"text": "consistent", "audio": "consistent", "audio_only": "audio-only"}
    for lang in summary["langs"]:
        for kind, data in summary["patching"].get(lang, {}).items():
            best = int(np.argmax(data["flip_rate"]))
            effects = np.array([np.nan if v is None else v for v in data["effect"]], dtype=float)
            effect_at = int(np.nanargmax(effects)) if not np.isnan(effects).all() else 0
            windows = ", ".join(f"{a}–{b}" for a, b in data["flip_window"]) or "none"
            patch_table.add_row(
                lang, f"{patching.KIND_NAMES[kind]} ({receivers[kind]})",
                f"{data['n_pairs']} ({data['n_clips']} clips)",
                f"{data['flip_rate'][best]:.2f} [{data['flip_low'][best]:.2f}, {data['flip_high'][best]:.2f}] "
                f"({layers[best]})", windows, f"{effects[effect_at]:.2f} ({layers[effect_at]})")
    console.print(patch_table)
    _print_answers(console, summary)
    takeover, trained = summary["planted_takeover"], summary.get("trained_takeover")
    if trained is not None:
        console.print(f"trained dynamics (pilot organism): the lens at the answer is trained toward the voice over "
                      f"residual layers 2..{trained['voice_through_residual']} and toward the answer at residual "
                      f"layer {trained['answer_at_residual']}; every layer attends to every token, so where the text "
                      "route runs is measured, not planted")
    if takeover is not None:
        console.print(f"planted takeover (organism): decoder layer K = {takeover['decoder_layer']} is the first to "
                      f"mix tokens; residual layers 0..{takeover['decoder_layer']} hold each token unmixed and "
                      f"residual layer {takeover['residual_layer']} (the tables' index) is K's output")
    console.print(f"wrote {out}/summary.json, items.jsonl, logit_lens.png, patching.png "
                  f"({summary['seconds']:.0f} s); clips padded to {summary['pad_seconds']} s; intervals: "
                  f"{summary['logit_lens']['interval_note']}")


def trained_takeover(organism: dict) -> dict:
    """Where the pilot organism's training puts its dynamics (`models.organism.train --plant pilot`): the lens
    toward the voice through residual layer K, toward the answer at K + settle (the objective's `settle`, recorded in
    the config; weights saved before it was recorded were trained with 2)."""
    k = organism["takeover_layer"]
    return dict(voice_through_residual=k, answer_at_residual=k + organism.get("settle", 2))


def _print_answers(console: Console, summary: dict) -> None:
    readout = summary["answer"]["readout"]
    how = ("argmax over the label tokens" if readout == "label"
           else f"greedy decoding of {summary['answer']['max_new_tokens']} tokens, first label word")
    table = Table(title=f"Answers ({how}): shares with 95% cluster bootstrap over clips")
    for column in ("lang", "condition", "items (clips)", "answer = A", "answer = T", "unparseable",
                   "top-1 token is a label", "label mass [95% CI]"):
        table.add_column(column)
    for lang, conditions in summary["accuracy"].items():
        for condition, row in conditions.items():
            mass = row["label_mass"]
            table.add_row(lang, condition, f"{row['n_items']} ({row['n_clips']} clips)",
                          probe_answers.share_text(row["answers_A"]),
                          probe_answers.share_text(row["answers_T"]) if "answers_T" in row else "–",
                          str(row["unparseable"]), probe_answers.share_text(row["top1_is_label"]),
                          f"{mass['mean']:.2f} [{mass['ci95'][0]:.2f}, {mass['ci95'][1]:.2f}]")
    console.print(table)
