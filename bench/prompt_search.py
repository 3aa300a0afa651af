"""Prompt-search cost per trial: `python -m bench.prompt_search [--threads 2] [--trials 30] [--lang both]`.

Prints, measured in one run: the seconds per trial (one trial = the audio-flip objective on every search conflict
item, no pruning) with no cache, with the audio-embedding cache and with audio + prefix key/value caches, and the
ratio none / prefix (target >= 2x on the organism). Two workloads, each replayed from cold caches per setting:
- after the audio: prompts that vary only after the audio (the seed prompt with each cue, emphasis and answer
  format), the case the prefix cache is made for;
- TPE study: the prompts a seeded TPE study proposes over --trials trials (recorded once with caches, in memory).
Model: the organism if its weights are present, else a random model of the organism's config (32 decoder layers of
width 128, a 2-layer encoder, 6 s window).
"""
from __future__ import annotations

import argparse
import itertools
import time
import warnings

import optuna
import torch
from rich.console import Console
from rich.table import Table

from models.adapter import ModelAdapter
from models.families.qwen2_audio import FAMILY
from models.loading import ORGANISM_DIR, load_model
from probes.inputs import load_probe_set
from prompts.grammar import Grammar, load_grammar, suggest
from prompts.objective import CACHES, AudioFlip, Scorer, prompted
from prompts.search import label_ids_all, split_items
from stimuli.conditions import seed_items


def organism_sized() -> ModelAdapter:
    """A random model with the organism's processor and config (no training)."""
    from models.organism import build

    processor = build.build_processor()
    model = build.build_model(build.build_config(processor.tokenizer, 32, 16), seed=0).eval()
    return ModelAdapter(model, processor, FAMILY, "random organism-sized")


def after_audio_prompts(grammar: Grammar, n: int = 10) -> list[dict]:
    """`n` of the prompts made of the seed prompt with each cue phrase, emphasis and answer format (evenly spaced
    over all of them): all vary only after the audio."""
    samples = []
    for answer in grammar.options("answer"):
        samples.append(dict(grammar.seed_prompt, answer=answer))
        for cue in (c for c in grammar.options("cue") if c != "none"):
            for phrase, emphasis in itertools.product(grammar.phrase_ids("cue", cue), grammar.options("emphasis")):
                samples.append({**grammar.seed_prompt, "answer": answer, "cue": cue, f"cue/{cue}": phrase,
                                "emphasis": emphasis})
    step = max(1, len(samples) // n)
    return samples[::step][:n]


def tpe_prompts(adapter, probe_set, grammar: Grammar, items, trials: int, seed: int) -> tuple[list[dict], float]:
    """The prompts of a seeded in-memory TPE study of `trials` trials (scored with caches); its seconds per trial."""
    objective = AudioFlip(Scorer(adapter, (5, 20)), items)
    label_ids = label_ids_all(adapter)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=min(20, trials))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(grammar.seed_prompt)

    def score(trial):
        asked = prompted(probe_set, grammar, suggest(trial, grammar), label_ids)
        return objective.aggregate(objective.evaluate(asked, objective.units)).value

    start = time.perf_counter()
    study.optimize(score, n_trials=trials)
    return [t.params for t in study.trials], (time.perf_counter() - start) / trials


def replay(adapter, probe_set, grammar: Grammar, items, samples: list[dict], cache: str) -> float:
    """Seconds per trial over `samples`, from cold caches."""
    objective = AudioFlip(Scorer(adapter, (5, 20), cache=cache), items)
    label_ids = label_ids_all(adapter)
    start = time.perf_counter()
    for sample in samples:
        asked = prompted(probe_set, grammar, sample, label_ids)
        objective.aggregate(objective.evaluate(asked, objective.units))
    return (time.perf_counter() - start) / len(samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=20, help="trials of the recorded TPE study")
    parser.add_argument("--lang", default="both", choices=("en", "zh", "both"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if (ORGANISM_DIR / "config.json").exists():
        adapter = load_model("organism", device=args.device)
    else:
        adapter = organism_sized()
        adapter.model.to(args.device)
    langs = ["en", "zh"] if args.lang == "both" else [args.lang]
    items = seed_items(langs, ("conflict", "consistent"))
    probe_set = load_probe_set(adapter, items)
    search, _ = split_items(items)
    n_items = sum(i.condition == "conflict" for i in search)
    grammar = load_grammar()
    replay(adapter, probe_set, grammar, search, [grammar.seed_prompt], "none")  # warm-up
    recorded, study_seconds = tpe_prompts(adapter, probe_set, grammar, search, args.trials, args.seed)
    console = Console()
    console.print(f"recorded a TPE study of {args.trials} trials: {study_seconds:.3f} s per trial (caches on, "
                  "in-memory storage, sampling included)")
    workloads = {"after the audio": after_audio_prompts(grammar), "TPE study": recorded}
    table = Table(title=f"Prompt search, seconds per trial ({adapter.model_id}, {adapter.n_layers} layers, "
                        f"{n_items} search conflict items, {args.threads} threads, {args.device})")
    for column in ("workload", "prompts", *[f"{c} s" for c in CACHES], "none / prefix"):
        table.add_column(column)
    for name, samples in workloads.items():
        seconds = {}
        for cache in CACHES:
            seconds[cache] = replay(adapter, probe_set, grammar, search, samples, cache)
            console.print(f"{name}, cache {cache}: {seconds[cache]:.3f} s per trial")
        table.add_row(name, str(len(samples)), *[f"{seconds[c]:.3f}" for c in CACHES],
                      f"{seconds['none'] / seconds['prefix']:.2f}x")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
