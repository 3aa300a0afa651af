"""`run_probes.py`: the logit lens and Patch Text vs Patch Audio on a model, with figures, tables and records."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.atomic import atomic_write_json, atomic_write_jsonl
from common.cli import languages, out_dir, runner_parser
from eval.baselines import BaselineRun, baseline_records
from eval.records import DEFAULT_WINDOW, write_record
from models.loading import load_model, model_hash
from probes import logit_lens, patching
from probes.figures import lens_figure, patching_figure
from probes.inputs import load_probe_set
from stimuli import spec
from stimuli.conditions import build_items, seed_items
from stimuli.manifest import read_manifest, stimulus_set_hash

CONDITIONS = ("audio_only", "conflict", "consistent", "voice")


def parser() -> argparse.ArgumentParser:
    p = runner_parser("run_probes.py", "Logit lens and Patch Text vs Patch Audio per layer, with figures.")
    p.add_argument("--stimuli", help="a manifest (JSONL/CSV) of your own clips; default: the committed seed set")
    p.add_argument("--text-mode", choices=("instruction", "claim"), default="instruction",
                   help="Patch Text copies the whole instruction span or only the asserted emotion word")
    p.add_argument("--window", type=int, default=1, help="patch layers l..l+window-1 together (1 = single layer)")
    p.add_argument("--no-pad", action="store_true",
                   help="do not pad clips to one duration (Patch Audio then refuses misaligned pairs)")
    p.add_argument("--batch-size", type=int, default=16, help="items per forward pass")
    p.add_argument("--n-boot", type=int, default=1000, help="cluster-bootstrap resamples")
    p.add_argument("--naive", action="store_true", help="patch with a full forward per layer (slow reference path)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    started = time.time()
    torch.manual_seed(args.seed)
    langs = languages(args.lang)
    if args.stimuli:
        items = build_items(read_manifest(args.stimuli), CONDITIONS, langs)
    else:
        items = seed_items(langs, CONDITIONS)
    adapter = load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    probe_set = load_probe_set(adapter, items, pad=not args.no_pad)
    out = out_dir(args, "probes")
    lens_config = logit_lens.LensConfig(batch_size=args.batch_size, n_boot=args.n_boot, seed=args.seed)
    patch_config = patching.PatchConfig(text_mode=args.text_mode, window=args.window, naive=args.naive,
                                        n_boot=args.n_boot, seed=args.seed)
    n_pairs = len(patching.make_pairs(items))
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("logit lens (items)", total=len(items))
        lens = logit_lens.run(adapter, probe_set, lens_config, lambda n: progress.advance(task, n))
        task = progress.add_task("patching (pairs)", total=n_pairs)
        patch = patching.run(adapter, probe_set, lens.final_logits, patch_config, lambda n: progress.advance(task, n))
    seconds = time.time() - started
    stimulus_hash = stimulus_set_hash(args.stimuli)
    takeover = (getattr(adapter.model.config, "modalflip_organism", None) or {}).get("takeover_layer")
    summary = dict(
        model_id=args.model, model_hash=model_hash(adapter), n_layers=adapter.n_layers,
        stimulus_hash=stimulus_hash, stimuli=args.stimuli or "seed set", langs=langs,
        pad_seconds=probe_set.pad_seconds, seconds=round(seconds, 1),
        planted_takeover_layer=takeover, logit_lens=lens.summary, patching=patch.summary,
        accuracy=_accuracy(items, lens.final_logits),
    )
    atomic_write_jsonl(out / "items.jsonl", [dict(probe="lens", **r) for r in lens.readings]
                       + [dict(probe=f"patch_{r['kind']}", **r) for r in patch.pairs])
    lens_figure(lens.summary, args.model, out / "logit_lens.png")
    patching_figure(patch.summary, args.model, out / "patching.png")
    atomic_write_json(out / "summary.json", summary)
    for lang in langs:
        for record in _baselines(items, lens, lang, args, adapter, summary["model_hash"], stimulus_hash, out, seconds):
            write_record(record, args.runs_dir)
    _print_tables(console, summary, out)
    return 0


def _answers(items, final_logits) -> dict[str, str]:
    emotions = spec.emotions()
    return {i.item_id: emotions[int(np.argmax(final_logits[i.item_id]))] for i in items}


def _accuracy(items, final_logits) -> dict:
    """Share of answers per condition that name the audio emotion A, and conflict answers naming T."""
    answers = _answers(items, final_logits)
    out: dict = {}
    for lang in sorted({i.lang for i in items}):
        sub = [i for i in items if i.lang == lang]
        row = {}
        for condition in CONDITIONS:
            group = [i for i in sub if i.condition == condition]
            if group:
                row[f"{condition}_answers_A"] = round(float(np.mean([answers[i.item_id] == i.audio_emotion
                                                                     for i in group])), 4)
        conflict = [i for i in sub if i.condition == "conflict"]
        if conflict:
            row["conflict_answers_T"] = round(float(np.mean([answers[i.item_id] == i.text_emotion
                                                             for i in conflict])), 4)
        out[lang] = row
    return out


def _baselines(items, lens, lang, args, adapter, fingerprint: str, stimulus_hash: str, out: Path, seconds: float):
    """The conflict prompt and the judge-by-the-voice prompt as leaderboard baselines (flip = answer is A)."""
    emotions = spec.emotions()
    answers = _answers(items, lens.final_logits)
    first, last = DEFAULT_WINDOW

    def run_of(condition: str) -> tuple[list[dict], np.ndarray]:
        group = [i for i in items if i.lang == lang and i.condition == condition]
        outcomes, shifts = [], []
        for i in group:
            curve = lens.label_logits[i.item_id]
            a, t = emotions.index(i.audio_emotion), emotions.index(i.text_emotion)
            toward_a = curve[:, a] - curve[:, t]
            shifts.append(toward_a)
            outcomes.append(dict(item_id=i.item_id, flipped=answers[i.item_id] == i.audio_emotion,
                                 answer=answers[i.item_id], delta_last=round(float(-toward_a[-1]), 4)))
        return outcomes, np.array(shifts)

    conflict_items, conflict_shift = run_of("conflict")
    voice_items, voice_shift = run_of("voice")
    if not conflict_items or not voice_items:
        return []
    window = slice(first, min(last, adapter.n_layers) + 1)
    shift_last = float(voice_shift[:, -1].mean() - conflict_shift[:, -1].mean())
    shift_window = float(voice_shift[:, window].mean() - conflict_shift[:, window].mean())
    figures = ["logit_lens.png", "patching.png"]
    per = seconds / max(1, len(items))
    return baseline_records(
        conflict=BaselineRun(items=conflict_items, settings={"template": "assert"}, seconds=per * len(conflict_items),
                             queries=len(conflict_items), figures=figures),
        judge_by_voice=BaselineRun(items=voice_items, settings={"template": "voice"}, delta_last=shift_last,
                                   delta_window=shift_window, seconds=per * len(voice_items),
                                   queries=len(voice_items), figures=figures),
        model_id=args.model, model_hash=fingerprint, stimulus_hash=stimulus_hash, lang=lang,
        seed=args.seed, artifacts=out)


def _print_tables(console: Console, summary: dict, out: Path) -> None:
    lens_table = Table(title="Logit lens: Δlogit = logit(T) − logit(A) at the answer position")
    for column in ("lang", "condition", "Δ at layer 0", "Δ at last layer", "critical layer (mean curve)",
                   "per-item critical layer [95% CI]", "sign settles"):
        lens_table.add_column(column)
    for lang in summary["langs"]:
        for condition, curve in summary["logit_lens"].get(lang, {}).items():
            items = curve["critical_layer_items"]
            lens_table.add_row(lang, condition, f"{curve['mean'][0]:+.2f}", f"{curve['mean'][-1]:+.2f}",
                               str(curve["critical_layer"]), f"{items['mean']:.1f} [{items['low']:.1f}, {items['high']:.1f}]",
                               str(curve["sign_settles"]))
    console.print(lens_table)
    patch_table = Table(title="Activation patching: receiver = consistent item, flip = answer moves to T")
    for column in ("lang", "patch", "pairs", "max flip rate (layer)", "layers flipping ≥ 50%", "max effect (layer)"):
        patch_table.add_column(column)
    layers = summary["patching"]["layers"]
    for lang in summary["langs"]:
        for kind, data in summary["patching"].get(lang, {}).items():
            best = int(np.argmax(data["flip_rate"]))
            effects = np.array([np.nan if v is None else v for v in data["effect"]], dtype=float)
            effect_at = int(np.nanargmax(effects)) if not np.isnan(effects).all() else 0
            windows = ", ".join(f"{a}–{b}" for a, b in data["flip_window"]) or "none"
            patch_table.add_row(lang, kind, str(data["n_pairs"]), f"{data['flip_rate'][best]:.2f} ({layers[best]})",
                                windows, f"{effects[effect_at]:.2f} ({layers[effect_at]})")
    console.print(patch_table)
    accuracy = Table(title="Answers (share naming A; conflict also naming T)")
    keys = sorted({k for row in summary["accuracy"].values() for k in row})
    accuracy.add_column("lang")
    for key in keys:
        accuracy.add_column(key)
    for lang, row in summary["accuracy"].items():
        accuracy.add_row(lang, *[f"{row.get(k, float('nan')):.2f}" for k in keys])
    console.print(accuracy)
    if summary["planted_takeover_layer"] is not None:
        console.print(f"planted takeover layer K = {summary['planted_takeover_layer']} (organism)")
    console.print(f"wrote {out}/summary.json, items.jsonl, logit_lens.png, patching.png "
                  f"({summary['seconds']:.0f} s); intervals: {summary['logit_lens']['interval_note']}")
