"""`run_prompt_search.py`: an Optuna study over the prompt grammar, scored by the probes, then a held-out evaluation.

Outputs in the run folder (default `<runs-dir>/prompt-search-<study name>`, the same on every rerun so that a rerun
resumes): `study.db` (the default SQLite storage), `trials.csv`, `best_prompts.json`, `score_over_trials.png`; and a
leaderboard record per language under `<runs-dir>/records/` for the best prompt on the held-out items.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from common.atomic import atomic_write_json, atomic_write_png, atomic_write_text
from common.backoff import with_oom_backoff
from common.cli import languages, parse_layer_range, runner_parser
from common.errors import ModalflipError
from eval.records import load_records, make_record, write_record
from models.loading import BUILT_IN, load_model, model_hash
from probes.inputs import load_probe_set
from prompts.grammar import describe, load_grammar
from prompts.objective import CACHES, OBJECTIVES
from prompts.search import SPLIT_RULE, SearchConfig, SearchResult, evaluate, run, split_items
from prompts.study import is_url, redact
from stimuli.conditions import build_items, seed_items
from stimuli.manifest import read_manifest, stimulus_set_hash

TRIAL_COLUMNS = ("number", "state", "value", "flip_rate", "margin", "effect", "tokens", "units", "forwards",
                 "seconds", "repeat_of", "worker", "note", "slots", "prompt")


def parser() -> argparse.ArgumentParser:
    p = runner_parser("run_prompt_search.py",
                      "Search the prompt grammar for prompts that flip text dominance (or strengthen text control), "
                      "scored by the probes; evaluate the best prompt on held-out clips.")
    p.add_argument("--trials", type=int, default=500,
                   help="the study's total of finished trials (complete or pruned); a rerun runs only the missing ones")
    p.add_argument("--objective", choices=OBJECTIVES, default="audio-flip",
                   help="audio-flip: flip rate toward the voice's emotion, ties broken by the mean lens margin toward "
                        "it over --layers; text-control: the Patch Text effect over --layers")
    p.add_argument("--layers", default="5-20", help="residual layer window FIRST-LAST (0 = embeddings)")
    p.add_argument("--nsga2", action="store_true",
                   help="NSGA-II on two objectives at once: the score (maximized) and prompt length in tokens "
                        "(minimized); no pruning")
    p.add_argument("--storage", help="Optuna storage: an SQLAlchemy URL (sqlite:///..., postgresql+psycopg://...) "
                                     "or a journal file path (default: sqlite:///<run folder>/study.db)")
    p.add_argument("--study-name", help="resume or join this study (default: model, objective, lang and layers)")
    p.add_argument("--slice", type=int, default=8,
                   help="units scored before the median pruner decides whether to finish a trial (0: no pruning)")
    p.add_argument("--startup-trials", type=int, default=20, help="random trials before TPE models the space")
    p.add_argument("--cache", choices=CACHES, default="prefix",
                   help="prefix: audio embeddings and the prefix key/value cache reused; audio: only the audio "
                        "embeddings; none: full forwards")
    p.add_argument("--prefix-cache-mb", type=float, default=1024,
                   help="memory for prefix key/value caches; the least recently used are dropped beyond it")
    p.add_argument("--batch-size", type=int, default=16,
                   help="items per forward pass (halved for the rest of the run when the GPU runs out of memory)")
    p.add_argument("--grammar", help="a prompt grammar file (default: prompts/grammar.json)")
    p.add_argument("--stimuli", help="a manifest (JSONL/CSV) of your own clips; default: the committed seed set")
    p.add_argument("--top", type=int, default=10, help="prompts in the table and best_prompts.json")
    p.add_argument("--worker", action="store_true",
                   help="only run trials (one of many workers): no held-out evaluation, files or leaderboard record; "
                        "run once more without it to report")
    return p


def default_study_name(args: argparse.Namespace, layers: tuple[int, int]) -> str:
    model = args.model if args.model in BUILT_IN else Path(args.model.rstrip("/")).name
    name = f"{model}-{args.objective}-{args.lang}-L{layers[0]}-{layers[1]}" + ("-nsga2" if args.nsga2 else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    torch.manual_seed(args.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    layers = parse_layer_range(args.layers)
    langs = languages(args.lang)
    conditions = ("conflict", "consistent")
    items = build_items(read_manifest(args.stimuli), conditions, langs) if args.stimuli else seed_items(langs, conditions)
    grammar = load_grammar(args.grammar)
    study_name = args.study_name or default_study_name(args, layers)
    out = Path(args.out) if args.out else Path(args.runs_dir) / f"prompt-search-{study_name}"
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    if not is_url(storage) and storage.endswith(".db"):
        raise ModalflipError(f"--storage {storage} looks like an SQLite file; pass it as a URL: sqlite:///{storage}")
    adapter = load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    probe_set = load_probe_set(adapter, items)
    search_items, heldout_items = split_items(items)
    stimulus_hash = stimulus_set_hash(args.stimuli)
    config = SearchConfig(study_name=study_name, storage=storage, trials=args.trials, objective=args.objective,
                          layers=layers, multi_objective=args.nsga2, slice_size=args.slice,
                          startup_trials=args.startup_trials, batch_size=args.batch_size, cache=args.cache,
                          prefix_cache_mb=args.prefix_cache_mb,
                          seed=args.seed, grammar_path=args.grammar, model_hash=model_hash(adapter),
                          stimulus_hash=stimulus_hash)
    console.print(f"study [bold]{study_name}[/] in {redact(storage)}: {args.objective} over layers "
                  f"{layers[0]}-{layers[1]}, {len({i.clip_id for i in search_items})} search clips, "
                  f"{len({i.clip_id for i in heldout_items})} held-out clips")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("trials", total=args.trials, best="-")

        def tick(finished: int, best: float | None) -> None:
            bar.update(task, completed=finished, best="-" if best is None else f"{best:.4f}")

        result = run(adapter, probe_set, config, tick, say=console.print)
    if args.worker:
        console.print(f"worker done: {result.ran} trials; the study has {result.finished}/{args.trials} finished"
                      + (f", {result.running} running elsewhere" if result.running else ""))
        return 0
    trials_csv(result, out / "trials.csv")
    score_plot(result, args, out / "score_over_trials.png")
    report = {"study": study_name, "storage": result.storage, "objective": args.objective, "layers": list(layers),
              "multi_objective": args.nsga2, "finished_trials": result.finished,
              "target_trials": args.trials, "still_running": result.running, "grammar_hash": grammar.hash,
              "split": SPLIT_RULE, "search_clips": sorted({i.clip_id for i in search_items}),
              "heldout_clips": sorted({i.clip_id for i in heldout_items}),
              "this_run": {"trials": result.ran, "scored": result.scored, "queries": result.queries,
                           "seconds": round(result.seconds, 1),
                           "mean_trial_seconds": round(float(np.mean(result.trial_seconds)), 4)
                           if result.trial_seconds else None,
                           "cache": args.cache, "prefix_hit_rate": None if result.prefix_hit_rate is None
                           else round(result.prefix_hit_rate, 4)},
              "best": result.best[:args.top]}
    if result.best:
        report["heldout"] = heldout_report(adapter, probe_set, result, heldout_items, args, grammar, config, out)
    atomic_write_json(out / "best_prompts.json", report)
    print_tables(console, report, out)
    return 0


def heldout_report(adapter, probe_set, result: SearchResult, heldout_items, args, grammar, config: SearchConfig,
                   out: Path) -> dict:
    """The best prompt and the seed conflict prompt on the held-out items; one leaderboard record per language.
    The record's seconds: every finished trial's own seconds (all runs and workers of the study) plus this
    held-out evaluation; not this run's wall time, whose trials are already in the sum."""
    evaluation_started = time.time()
    layers = config.layers
    best = result.best[0]
    found, size = with_oom_backoff(
        lambda size: evaluate(adapter, probe_set, best["slots"], heldout_items, layers, size, args.grammar),
        args.batch_size, "items per forward")
    seed, _ = with_oom_backoff(
        lambda size: evaluate(adapter, probe_set, grammar.seed_prompt, heldout_items, layers, size, args.grammar),
        size, "items per forward")
    seed_by_id = {row["item_id"]: row for row in seed.items}
    trials = [t for t in result.trials if t["state"] in ("COMPLETE", "PRUNED")]
    study_seconds = float(sum(t["seconds"] or 0.0 for t in trials))
    queries = int(sum(t["forwards"] or 0 for t in trials)) + 2 * found.n
    records, listed = [], listed_records(args.runs_dir, result, best["number"], config.model_hash)
    for lang in languages(args.lang):
        rows = [dict(r, prompt=describe(grammar, best["slots"], [lang])[lang]) for r in found.items if r["lang"] == lang]
        if not rows or lang in listed:
            continue
        delta_last = float(np.mean([r["delta_last"] - seed_by_id[r["item_id"]]["delta_last"] for r in rows]))
        delta_window = float(np.mean([r["delta_window"] - seed_by_id[r["item_id"]]["delta_window"] for r in rows]))
        record = make_record(
            method="prompt-search", model_id=args.model, model_hash=config.model_hash,
            stimulus_hash=config.stimulus_hash, lang=lang, budget={}, seed=args.seed, items=rows,
            delta_last=delta_last, delta_window=delta_window,
            seconds=study_seconds + time.time() - evaluation_started,
            queries=queries, artifacts=out, window=layers, figures=["score_over_trials.png"],
            settings=dict(objective=args.objective, layers=list(layers), trials=result.finished,
                          study=result.study_name, storage=result.storage, trial=best["number"],
                          slots=best["slots"], prompt=best["prompt"], search_score=best["value"],
                          search_flip_rate=best["flip_rate"], grammar_hash=grammar.hash,
                          grammar_version=grammar.data.get("version"), split=SPLIT_RULE,
                          multi_objective=args.nsga2, cache=args.cache))
        records.append(str(write_record(record, args.runs_dir)))
    return {"trial": best["number"], "slots": best["slots"], "n_items": found.n, "flips": found.flips,
            "flip_rate": round(found.flip_rate, 4), "ci": [round(found.interval.low, 4), round(found.interval.high, 4)],
            "unit": found.interval.unit, "n_units": found.interval.n_units,
            "seed_prompt": {"flips": seed.flips, "flip_rate": round(seed.flip_rate, 4),
                            "ci": [round(seed.interval.low, 4), round(seed.interval.high, 4)]},
            "delta_logit": "logit(T) − logit(A) at the answer position (logits), per item",
            "items": found.items, "records": records}


def listed_records(runs_dir: str, result: SearchResult, trial: int, model_hash: str) -> set[str]:
    """Languages whose leaderboard already holds this study's best prompt at this many trials (a rerun of a
    finished study, or a second worker reporting): no second record for them."""
    records, _ = load_records(runs_dir)
    return {r.lang for r in records if r.method == "prompt-search" and r.model_hash == model_hash
            and r.settings.get("study") == result.study_name and r.settings.get("trial") == trial
            and r.settings.get("trials") == result.finished}


def trials_csv(result: SearchResult, path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(TRIAL_COLUMNS)
    for row in result.trials:
        writer.writerow([json.dumps(row[c], ensure_ascii=False) if c in ("slots", "prompt") else
                         ("" if row[c] is None else row[c]) for c in TRIAL_COLUMNS])
    atomic_write_text(path, buffer.getvalue())


def score_plot(result: SearchResult, args, path: Path) -> None:
    """Score per trial (complete: dots; pruned: crosses at their slice score) and the best score so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for state, marker, color in (("COMPLETE", "o", "tab:blue"), ("PRUNED", "x", "tab:gray")):
        rows = [t for t in result.trials if t["state"] == state and t["value"] is not None]
        ax.scatter([t["number"] for t in rows], [t["value"] for t in rows], s=12, marker=marker, color=color,
                   label=state.lower(), alpha=0.7)
    complete = sorted((t["number"], t["value"]) for t in result.trials if t["state"] == "COMPLETE")
    if complete:
        numbers, values = zip(*complete)
        ax.step(numbers, np.maximum.accumulate(values), where="post", color="tab:red", label="best so far")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("trial")
    ax.set_ylabel("score" if args.objective == "text-control" else "score (flip rate + tie-breaker)")
    ax.set_title(f"{result.study_name}: {args.objective}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write_png(path, fig)


def print_tables(console: Console, report: dict, out: Path) -> None:
    table = Table(title=f"Top prompts of {report['study']} ({report['objective']}, search items)",
                  caption="search-item rates are the objective, picked as the best of many trials and so biased "
                          "upward; the held-out line below gives the best prompt's rate with its interval over clips",
                  caption_justify="left")
    measure = "effect" if report["objective"] == "text-control" else "margin"
    for column in ("trial", "score", "flip rate", "margin toward A" if measure == "margin" else measure, "tokens"):
        table.add_column(column, justify="right")
    table.add_column("prompt (system | user) for clips in the first language", overflow="fold")
    for row in report["best"]:
        prompt = next(iter(row["prompt"].values()))
        value = row[measure]
        table.add_row(str(row["number"]), f"{row['value']:.4f}", f"{row['flip_rate']:.3f}",
                      "-" if value is None else f"{value:+.3f}", f"{row['tokens']:.0f}",
                      (prompt["system"] + " | " + prompt["user"]).replace("\n", " "))
    console.print(table)
    run = report["this_run"]
    console.print(f"{report['finished_trials']}/{report['target_trials']} trials finished in the study"
                  + (f", {report['still_running']} still running elsewhere" if report["still_running"] else "")
                  + f"; this run: {run['trials']} trials ({run['scored']} scored, mean "
                  + (f"{run['mean_trial_seconds']:.3f} s" if run["mean_trial_seconds"] is not None else "-")
                  + f" each), {run['seconds']:.0f} s"
                  + (f"; prefix cache hit rate {run['prefix_hit_rate']:.2f}" if run["prefix_hit_rate"] is not None
                     else ""))
    held = report.get("heldout")
    if held:
        console.print(f"held-out ({held['n_items']} conflict items of clips {', '.join(report['heldout_clips'])}): "
                      f"best prompt (trial {held['trial']}) flips {held['flips']}/{held['n_items']} = "
                      f"{held['flip_rate']:.2f} [{held['ci'][0]:.2f}, {held['ci'][1]:.2f}]; the seed conflict "
                      f"prompt flips {held['seed_prompt']['flips']}/{held['n_items']} = "
                      f"{held['seed_prompt']['flip_rate']:.2f} [{held['seed_prompt']['ci'][0]:.2f}, "
                      f"{held['seed_prompt']['ci'][1]:.2f}]; 95% intervals resample the {held['n_units']} "
                      f"held-out {held['unit']}s")
    console.print(f"wrote {out}/trials.csv, best_prompts.json, score_over_trials.png"
                  + (f" and {len(held['records'])} new leaderboard record(s)" if held else ""))
