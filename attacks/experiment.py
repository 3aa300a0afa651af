"""`run_attack.py`'s one function: select the conflict items, attack them with `attacks.pgd`, measure, write.

Output folder (`--out`, default `<runs-dir>/attack-<timestamp>`), for one budget:
    clean/<lang>/<clip>.wav, adv/<lang>/<clip>.wav   the clean clips and their adversarial versions (16-bit)
    checkpoint.pt                                    the attack's state every --checkpoint-every steps; rerun with
                                                     the same --out to resume
    metrics.json                                     budget, persistence window and how it was chosen, perceptual
                                                     size, flips, persistence, per-item answers
    curve.json, curve.png                            loss and flip rate per step (current and best iterate)
    persistence.png                                  clean vs adversarial per layer, the attack window shaded
and one leaderboard record per language under `<runs-dir>/records/`. With several budgets (`--epsilon
0.001,0.002,...` and/or several `--snr-db`), each budget gets that folder as a subfolder (`linf-0.002`,
`linf-0.002-snr-30`) and its own records, and the top folder gets `sweep.json` and `sweep.png`: the flip rate of
the text-dominant answers against ε and against the achieved SNR, with intervals over clips. Every user error is
raised before a folder is created.

`--transfer-from RUN_DIR` evaluates the adversarial clips another run wrote (one budget's folder, made on any
model) on this `--model`, without optimising: the same files less the curve and checkpoint, method
"<source method>-transfer", the source run named in metrics.json and the record's settings.

The persistence window is `--from-layer`..`--target-layer`, or with `--window-from PROBES` the one the probes of
the attacked model give (`attacks.window`); metrics.json and each record's settings hold it as
{"from", "to", "rule", "probes"} (rule "options" or "probes"; a transfer keeps the source run's).

Flips. An item's target is the voice's emotion A (or `--target-emotion`). "before"/"after" count the conflict items
whose answer (the label word with the highest final logit) is the target, clean and attacked; "text_dominant"
counts, among the items whose clean answer was the text's emotion T, those whose attacked answer is the target.
The leaderboard record holds every evaluated conflict item with flipped = its attacked answer is the target, the
definition the baselines use, so the board compares attack and baselines on the same items. Every rate's 95%
interval resamples clips (`common.stats.clustered_rate`): a clip's items share its δ (with `--universal` they all
share one δ per emotion, and the unit is still the clip, named "clip (one universal δ)").

Δlogit = logit(T) − logit(A), the text's label minus the voice's, read by the logit lens at the answer position:
positive where the text leads, and an attack that works makes its shift (attacked − clean) negative.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from attacks import directions as direction_cache
from attacks import pgd, report
from attacks.budget import perceptual
from attacks.persistence import delta_logit, read, summarize
from attacks.window import Window, from_probes
from common import cli
from common.atomic import atomic_write_bytes, atomic_write_json
from common.backoff import with_oom_backoff
from common.errors import ModalflipError
from common.stats import UNIT_CLIP, clustered_rate
from models.adapter import ModelAdapter
from models.loading import load_model, model_hash
from probes.inputs import ProbeSet, load_probe_set
from prompts.grammar import load_grammar
from prompts.objective import prompted
from prompts.search import label_ids_all
from stimuli import spec
from stimuli.audio_io import load_audio, write_wav
from stimuli.conditions import Item, build_items, seed_items
from stimuli.manifest import read_manifest, stimulus_set_hash

CHECKPOINT = "checkpoint.pt"
UNIVERSAL_UNIT = "clip (one universal δ)"
TEMPLATES = ("assert", "voice")  # stimulus templates a conflict item can be asked with (`stimuli/spec/templates.json`)


def numbers(text: str | None, option: str) -> list[float | None]:
    """A comma-separated list of numbers ('0.001,0.002'); [None] for an unset option; a `ModalflipError` for text
    that is not one."""
    if text is None:
        return [None]
    try:
        values = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ModalflipError(f"{option} {text!r} is not a number or a comma-separated list of numbers, "
                             "e.g. 0.001,0.002,0.004") from None
    if not values:
        raise ModalflipError(f"{option} is empty; give a number or a comma-separated list")
    return list(dict.fromkeys(values))


def attack_window(args: argparse.Namespace) -> Window:
    """The persistence window: `--window-from` the probes of the attacked model (`attacks.window.from_probes`), or
    `--from-layer`/`--target-layer` (unset: `PGDConfig`'s); a `ModalflipError` when both are given, or
    `--window-from` with `--transfer-from` (whose window is the source run's)."""
    if args.window_from is None:
        defaults = pgd.PGDConfig()
        return Window(defaults.from_layer if args.from_layer is None else args.from_layer,
                      defaults.target_layer if args.target_layer is None else args.target_layer)
    given = [option for option, value in (("--from-layer", args.from_layer), ("--target-layer", args.target_layer),
                                          ("--transfer-from", args.transfer_from)) if value is not None]
    if given:
        raise ModalflipError(f"--window-from sets the persistence window, so it cannot go with {' and '.join(given)}; "
                             "drop one")
    return from_probes(args.window_from, cli.languages(args.lang))


def configs_from_args(args: argparse.Namespace, window: Window) -> list[pgd.PGDConfig]:
    """The attack settings named on the command line (the rest keep `PGDConfig`'s defaults) over the persistence
    `window`, one per budget of the sweep (every --epsilon with every --snr-db)."""
    target = spec.check_emotion(args.target_emotion) if args.target_emotion else None
    base = pgd.PGDConfig(
        steps=args.steps, optimizer=args.optimizer, step_size=args.step_size, schedule=args.schedule,
        restarts=args.restarts, loss=args.loss, kappa=args.kappa, from_layer=window.first,
        target_layer=window.last, final_weight=args.final_weight, target_emotion=target,
        universal=args.universal, eot=args.eot, checkpoint_every=args.checkpoint_every, seed=args.seed,
        persistence_weight=args.persistence_weight, lens_weight=args.lens_weight,
        prompts_per_clip=args.prompts_per_clip, batch_rows=args.batch_rows)
    configs = [dataclasses.replace(base, epsilon=eps, snr_db=snr)
               for eps, snr in itertools.product(numbers(args.epsilon, "--epsilon"), numbers(args.snr_db, "--snr-db"))]
    for config in configs:
        pgd.check_settings(config)  # an impossible budget or setting is an error before anything loads
    return configs


def contains(outer: pgd.PGDConfig, inner: pgd.PGDConfig) -> bool:
    """Whether `inner`'s budget ball lies inside `outer`'s (smaller or equal ε, an SNR floor at least as high)."""
    return inner.epsilon <= outer.epsilon and (
        outer.snr_db is None or (inner.snr_db is not None and inner.snr_db >= outer.snr_db))


def budget_name(config: pgd.PGDConfig) -> str:
    """The subfolder of one budget in a sweep: 'linf-0.002', 'linf-0.002-snr-30'."""
    return f"linf-{config.epsilon:g}" + (f"-snr-{config.snr_db:g}" if config.snr_db is not None else "")


def stimulus_items(args: argparse.Namespace, langs: list[str]) -> list[Item]:
    """The audio-only and conflict items of `--stimuli` (a manifest of the user's clips) or of the seed set."""
    conditions = ("audio_only", "conflict")
    if args.stimuli:
        return build_items(read_manifest(args.stimuli), conditions, langs)
    return seed_items(langs, conditions)


def prompt_source(name: str | None) -> tuple[str | None, dict | None]:
    """(stimulus template, grammar sample) named by `--prompt-from`: a template of `TEMPLATES`, or a prompt
    search's best_prompts.json (its best prompt). (None, None) when unset: the stimulus set's own prompts."""
    if name is None:
        return None, None
    if name in TEMPLATES:
        return name, None
    path = Path(name)
    if not path.is_file():
        raise ModalflipError(f"--prompt-from {name}: neither a template ({', '.join(TEMPLATES)}) nor a file; give "
                             "a prompt search's best_prompts.json")
    try:
        report_data = json.loads(path.read_text(encoding="utf-8"))
        best = report_data["best"][0]
        sample = dict(best["slots"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise ModalflipError(f"--prompt-from {name} is not a prompt search's best_prompts.json with at least one "
                             "prompt under 'best'") from None
    grammar = load_grammar()
    if report_data.get("grammar_hash") not in (None, grammar.hash):
        raise ModalflipError(f"--prompt-from {name} was searched with another prompt grammar (hash "
                             f"{report_data.get('grammar_hash')}, this one {grammar.hash}); rerun the search")
    return None, {"sample": sample, "trial": best.get("number"), "source": str(path)}


def transfer_source(run_dir: str | None, batch_rows: int) -> tuple[pgd.PGDConfig | None, dict | None]:
    """(the source attack's settings, a note on it) for `--transfer-from RUN_DIR`, a single-budget attack folder
    whose adversarial clips are evaluated on this model without optimising; (None, None) when unset."""
    if run_dir is None:
        return None, None
    folder = Path(run_dir)
    if (folder / "sweep.json").is_file():
        raise ModalflipError(f"--transfer-from {run_dir} is a sweep; give one budget's folder, e.g. "
                             f"{folder / 'linf-0.002'}")
    try:
        source = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(pgd.PGDConfig)}
        config = pgd.PGDConfig(**{k: v for k, v in source["settings"].items() if k in known})
    except (OSError, ValueError, KeyError, TypeError):
        raise ModalflipError(f"--transfer-from {run_dir} holds no attack's metrics.json; give the folder of a "
                             "finished run_attack.py run") from None
    note = {"run": str(folder), "model": source["model"], "method": source["method"], "window": source.get("window")}
    return dataclasses.replace(config, batch_rows=batch_rows), note


def transferred_deltas(folder: Path, items: list[Item], inputs: ProbeSet, config: pgd.PGDConfig,
                       sampling_rate: int) -> pgd.PGDResult:
    """The δ of every clip of `items` as the source run wrote it: its adversarial WAV minus the clean clip."""
    deltas = {}
    for item in items:
        if item.clip_id in deltas:
            continue
        path = folder / "adv" / item.lang / f"{item.clip_id}.wav"
        if not path.is_file():
            raise ModalflipError(f"--transfer-from {folder} has no adversarial clip {item.clip_id} ({path}); select "
                                 "the clips it attacked with --clips and --lang")
        clean = inputs.wave(item.clip_id)
        adversarial = torch.as_tensor(load_audio(path, sampling_rate))
        if adversarial.shape != clean.shape:
            raise ModalflipError(f"{path} lasts {adversarial.shape[0]} samples, the clean clip {clean.shape[0]}: "
                                 "the source run attacked other audio")
        deltas[item.clip_id] = adversarial - clean
    return pgd.PGDResult(deltas=deltas, budget=config.budget, universal=False)


def with_template(items: list[Item], template: str | None) -> list[Item]:
    """The conflict items asked with stimulus template `template` instead of their own (None: unchanged)."""
    if template is None:
        return items
    return [dataclasses.replace(item, instruction=spec.render_instruction(item.lang, template, item.text_emotion))
            if item.condition == "conflict" else item for item in items]


def probe_inputs(adapter: ModelAdapter, items: list[Item], searched: dict | None) -> ProbeSet:
    """The clips of `items` with their prompts: the items' own, or the searched prompt (`prompt_source`)."""
    inputs = load_probe_set(adapter, items, pad=False)
    if searched is None:
        return inputs
    return prompted(inputs, load_grammar(), searched["sample"], label_ids_all(adapter))


def select_items(items: list[Item], clips: str | None, target: str | None) -> list[Item]:
    """The conflict items to attack: of the clips named in `clips` (comma-separated clip ids, or seed ids such as
    A7 for every language), and when targeted, only those where neither the voice nor the text is the target."""
    chosen = [item for item in items if item.condition == "conflict"]
    if clips:
        wanted = {name.strip() for name in clips.split(",") if name.strip()}
        chosen = [item for item in chosen if item.clip_id in wanted or item.clip_id.split("-")[0] in wanted]
    if target:
        chosen = [item for item in chosen if target not in (item.audio_emotion, item.text_emotion)]
    if not chosen:
        raise ModalflipError(f"no conflict items to attack (--clips {clips or 'all'}, --target-emotion "
                             f"{target or 'none'}); name clips of the stimulus set such as A7 or A7-en, see "
                             "stimuli/seed/manifest.jsonl or your --stimuli manifest")
    return chosen


def universal_split(items: list[Item]) -> tuple[list[Item], list[Item], dict[str, list[str]]]:
    """(training items, held-out items, {"train": clip ids, "held_out": clip ids[, "held_out_sentences": ...]}).
    Where a language's clips speak several sentences (`python -m models.organism.export`), its sentences sorted
    alternate between training and held out, so a universal δ is evaluated on sentences (and clips) it was not
    trained on. Otherwise (the seed set: one sentence) each audio emotion's clips sorted by (intensity, language,
    id) alternate, and the held-out clips are other clips of the same sentence."""
    sentences: dict[str, set[str]] = {}
    for item in items:
        sentences.setdefault(item.lang, set()).add(item.sentence)
    held_sentences = {sentence for group in sentences.values() if len(group) > 1
                      for rank, sentence in enumerate(sorted(group)) if rank % 2 == 1}
    clips: dict[str, list[tuple]] = {}  # audio emotion -> (intensity, lang, clip id) of its one-sentence clips
    train_ids, held_ids = set(), set()
    for item in items:
        if len(sentences[item.lang]) > 1:
            (held_ids if item.sentence in held_sentences else train_ids).add(item.clip_id)
        elif (key := (item.intensity, item.lang, item.clip_id)) not in clips.setdefault(item.audio_emotion, []):
            clips[item.audio_emotion].append(key)
    for keys in clips.values():
        for rank, key in enumerate(sorted(keys)):
            (train_ids if rank % 2 == 0 else held_ids).add(key[2])
    if not held_ids or not train_ids:
        raise ModalflipError("--universal needs two clips of one voice emotion to hold one out; select more clips")
    split = {"train": sorted(train_ids), "held_out": sorted(held_ids)}
    if held_sentences:
        split["held_out_sentences"] = sorted(held_sentences)
    return ([i for i in items if i.clip_id in train_ids], [i for i in items if i.clip_id in held_ids], split)


Recorder = Callable[..., str]  # keyword fields of `eval.records.make_record` -> path of the written record


def run_attack(args: argparse.Namespace, recorder: Recorder) -> int:
    """The whole `run_attack.py` run, every budget of the sweep; returns the exit status. `recorder` writes the
    leaderboard records (it comes from the runner: attacks sit below eval and do not import it)."""
    console = Console()
    window = attack_window(args)
    source_config, transfer = transfer_source(args.transfer_from, args.batch_rows)
    if transfer:  # the source run's window, as it was chosen there
        chosen = transfer["window"] or {}
        window = Window(source_config.from_layer, source_config.target_layer, chosen.get("rule", "options"),
                        chosen.get("probes"))
    configs = [source_config] if transfer else configs_from_args(args, window)
    template, searched = prompt_source(args.prompt_from)
    langs = cli.languages(args.lang)
    all_items = with_template(stimulus_items(args, langs), template)
    attacked = select_items(all_items, args.clips, configs[0].target_emotion)
    adapter = load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    window.check_model(model_hash(adapter))
    for config in configs:
        pgd.check_config(adapter, config)
    if configs[0].universal:
        train_items, eval_items, split = universal_split(attacked)
    else:
        train_items, eval_items, split = attacked, attacked, None
    train_clips = {item.clip_id for item in train_items}
    clean_only = [item for item in all_items if item.condition == "audio_only"
                  and (split is None or item.clip_id in train_clips)]  # a universal δ never sees held-out clips
    directions, cached = direction_cache.load_or_compute(adapter, clean_only, Path(args.runs_dir) / "cache",
                                                         configs[0].batch_rows)
    setup = Setup(adapter=adapter, args=args, inputs=probe_inputs(adapter, attacked, searched), attacked=attacked,
                  train_items=train_items, eval_items=eval_items, split=split, directions=directions,
                  direction_clips=sorted({item.clip_id for item in clean_only}), searched=searched,
                  template=template, transfer=transfer, window=window)
    out = cli.out_dir(args, "attack")
    console.print(f"[bold]attack[/bold] {adapter.model_id} ({adapter.n_layers} layers) on {len(train_items)} "
                  f"prompts of {len(train_clips)} clips; {window.text()}; "
                  f"{configs[0].optimizer}, {configs[0].steps} steps × {configs[0].restarts} restart(s); "
                  f"{len(configs)} budget(s); emotion directions {'from the cache' if cached else 'computed'} "
                  f"({directions.key}); out {out}")
    points, done = [], []
    for config in sorted(configs, key=lambda c: (c.epsilon, c.snr_db is None, -(c.snr_db or 0))):
        folder = out if len(configs) == 1 else out / budget_name(config)
        folder.mkdir(parents=True, exist_ok=True)
        inner = next((result for smaller, result in reversed(done) if contains(config, smaller)), None)
        metrics, result = attack_budget(setup, config, folder, recorder, console, inner)
        points.append((folder, metrics))
        done.append((config, result))
    if len(configs) > 1:
        sweep = sweep_summary(points, out)
        atomic_write_json(out / "sweep.json", sweep)
        report.sweep_figure(sweep, out / "sweep.png")
        console.print(report.sweep_table(sweep))
        console.print(f"wrote {out / 'sweep.json'}, {out / 'sweep.png'} and one folder per budget")
    return 0


@dataclasses.dataclass
class Setup:
    """What every budget of one run shares: the model, the items (trained on and evaluated), the clips with their
    prompts, the emotion directions (and the clips they were learnt from), the prompt's source and, for
    `--transfer-from`, the run whose δs are evaluated."""

    adapter: ModelAdapter
    args: argparse.Namespace
    inputs: ProbeSet
    attacked: list[Item]
    train_items: list[Item]
    eval_items: list[Item]
    split: dict | None
    directions: direction_cache.Directions
    direction_clips: list[str]
    searched: dict | None
    template: str | None
    window: Window  # the persistence window and how it was chosen
    transfer: dict | None = None  # `transfer_source`'s note when the δs come from another run


def attack_budget(setup: Setup, config: pgd.PGDConfig, out: Path, recorder: Recorder, console: Console,
                  inner: pgd.PGDResult | None = None) -> tuple[dict, pgd.PGDResult]:
    """One budget: optimise, measure, write the folder's files and records; returns its metrics and the attack's
    result. inner: the result of a budget whose ball lies inside this one; its best δs are the first start here."""
    started = time.time()
    adapter, inputs, directions = setup.adapter, setup.inputs, setup.directions
    targets = [directions.index(pgd.target_of(item, config)) for item in setup.eval_items]
    if setup.transfer:
        result, rows = transferred_deltas(Path(setup.transfer["run"]), setup.attacked, inputs, config,
                                          adapter.sampling_rate), config.batch_rows
    else:
        result, rows = with_oom_backoff(
            lambda size: _optimise(adapter, setup.train_items, dataclasses.replace(config, batch_rows=size),
                                   directions, inputs, out / CHECKPOINT, console, inner),
            config.batch_rows, "PGD rows per forward", say=console.print)
    config = dataclasses.replace(config, batch_rows=rows)
    clean_waves = {clip_id: inputs.wave(clip_id) for clip_id in inputs.waves}
    adv_waves = {}
    for item in setup.attacked:
        if item.clip_id not in adv_waves:
            clean = clean_waves[item.clip_id]
            adv_waves[item.clip_id] = (clean + result.perturbation(item, clean)).clamp(-1.0, 1.0)
    items = setup.eval_items
    clean_read = read(adapter, inputs, items, [clean_waves[i.clip_id] for i in items], targets, directions, rows)
    adv_read = read(adapter, inputs, items, [adv_waves[i.clip_id] for i in items], targets, directions, rows)

    held_out = set(setup.split["held_out"]) if setup.split else set()
    clip_rows = _write_audio(out, setup.attacked, clean_waves, adv_waves, adapter.sampling_rate, held_out)
    persistence = summarize(clean_read, adv_read, targets, (config.from_layer, config.target_layer))
    metrics = _metrics(setup, config, clean_read, adv_read, persistence, clip_rows, result, time.time() - started)
    deepest = {k: "none" if v is None else v for k, v in persistence["deepest_separating_layer"].items()}
    title = (f"{adapter.model_id}: clean vs adversarial (ε = {config.epsilon:g}); deepest layer where the probe "
             f"reads the target: {deepest['clean']} → {deepest['adversarial']}")
    report.persistence_figure(persistence, out / "persistence.png", title)
    if not setup.transfer:
        atomic_write_json(out / "curve.json", {"optimizer": config.optimizer, "steps": config.steps,
                                               "restarts": config.restarts, "curve": result.curve})
        report.curve_figure(result.curve, out / "curve.png",
                            f"{metrics['method']}, {config.optimizer}, ε = {config.epsilon:g} ({adapter.model_id})")
    metrics["records"] = _records(setup, config, metrics, out, recorder)
    atomic_write_json(out / "metrics.json", metrics)
    console.print(report.summary_table(metrics))
    console.print(report.clip_table(metrics))
    if not persistence["survives_further"]:
        console.print("[yellow]the target emotion does not separate deeper in the attacked audio than in the clean "
                      "audio at the answer position[/yellow]")
    console.print(f"wrote {out / 'metrics.json'}, {out / 'persistence.png'}, {len(clip_rows)} adversarial clips; "
                  f"leaderboard record(s) {', '.join(metrics['records'])}")
    return metrics, result


def sweep_summary(points: list[tuple[Path, dict]], out: Path) -> dict:
    """`sweep.json`: per budget (folder, metrics), the text-dominant flip rate with its interval over clips, the
    achieved mean SNR, STOI and PESQ, and the folder; one curve (method) per run."""
    rows = []
    for folder, metrics in points:
        size = metrics["perceptual"]["summary"]
        rows.append({"budget": metrics["budget"], "folder": str(folder.relative_to(out)),
                     "text_dominant": metrics["flips"]["text_dominant"], "after": metrics["flips"]["after"],
                     "snr_db_mean": size["snr_db_mean"], "stoi_mean": size["stoi_mean"],
                     "pesq_wb_mean": size["pesq_wb_mean"], "records": metrics["records"]})
    first = points[0][1]
    return {"method": first["method"], "model": first["model"], "unit": first["flips"]["unit"],
            "optimizer": first["settings"]["optimizer"], "points": rows}


def _optimise(adapter, items, config, directions, inputs: ProbeSet, checkpoint: Path, console: Console,
              inner: pgd.PGDResult | None) -> pgd.PGDResult:
    total = config.steps * config.restarts
    columns = [TextColumn(f"{config.optimizer} ε={config.epsilon:g}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TextColumn("loss {task.fields[loss]:+.3f}"),
               TextColumn("flips {task.fields[flips]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("pgd", total=total, loss=float("nan"), flips="-")

        def advance(step: int, parts: dict[str, float]) -> None:
            flips = parts.get("flip_rate")
            progress.update(task, completed=step + 1, loss=parts["loss"],
                            flips="-" if flips is None else f"{flips:.0%}")

        if checkpoint.is_file():
            console.print(f"resuming from {checkpoint}")
        result = pgd.run(adapter, items, config, directions, checkpoint=checkpoint, callback=advance, inputs=inputs,
                         start=inner.deltas if inner is not None else None)
        progress.update(task, completed=result.steps)
    return result


def _write_audio(out: Path, items: list[Item], clean_waves: dict, adv_waves: dict, sr: int,
                 held_out: set[str]) -> list[dict]:
    """Copy each clean clip to clean/<lang>/, write its adversarial version to adv/<lang>/; returns one row per
    clip with its perceptual size."""
    rows = []
    for clip_id in dict.fromkeys(item.clip_id for item in items):
        item = next(i for i in items if i.clip_id == clip_id)
        clean, adv = clean_waves[clip_id].numpy(), adv_waves[clip_id].numpy()
        atomic_write_bytes(out / "clean" / item.lang / f"{clip_id}.wav", Path(item.audio_path).read_bytes())
        write_wav(out / "adv" / item.lang / f"{clip_id}.wav", adv, sr)
        size = perceptual(clean, adv, sr)
        rows.append({"clip_id": clip_id, "lang": item.lang, "audio_emotion": item.audio_emotion,
                     "intensity": item.intensity, "held_out": clip_id in held_out,
                     "adversarial": f"adv/{item.lang}/{clip_id}.wav", "clean": f"clean/{item.lang}/{clip_id}.wav",
                     **asdict(size)})
    return rows


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def method_name(config: pgd.PGDConfig, prompt: str | None = None) -> str:
    """The leaderboard name of an attack: the terms its objective has (persistence in the window, counting the
    window's lens margin, and the final answer), its mode and, when not the stimulus set's own, the prompt it ran
    under ("searched-prompt", "voice-prompt"), so that each objective and each combination with a prompt lever
    ranks as its own method."""
    window = config.persistence_weight > 0 or config.lens_weight > 0
    objective = "+".join(part for part, used in (("persistence", window), ("answer", config.final_weight > 0)) if used)
    return (f"pgd-{objective}" + ("-universal" if config.universal else "")
            + ("-targeted" if config.target_emotion else "") + (f"+{prompt}" if prompt else ""))


def prompt_label(setup: Setup) -> str | None:
    """The prompt part of the method's name: None for the stimulus set's own conflict prompt."""
    if setup.searched is not None:
        return "searched-prompt"
    return None if setup.template in (None, "assert") else f"{setup.template}-prompt"


def _metrics(setup: Setup, config: pgd.PGDConfig, clean_read, adv_read, persistence, clip_rows,
             result: pgd.PGDResult, seconds) -> dict:
    adapter, args, items, split = setup.adapter, setup.args, setup.eval_items, setup.split
    emotions = spec.emotions()
    voice = [emotions.index(item.audio_emotion) for item in items]
    text = [emotions.index(item.text_emotion) for item in items]
    clean_dl, adv_dl = delta_logit(clean_read, text, voice), delta_logit(adv_read, text, voice)
    first, last = config.from_layer, config.target_layer
    rows = []
    for i, item in enumerate(items):
        target = pgd.target_of(item, config)
        rows.append({
            "item_id": item.item_id, "clip_id": item.clip_id, "lang": item.lang,
            "audio_emotion": item.audio_emotion, "text_emotion": item.text_emotion, "target": target,
            "clean_answer": clean_read.answers[i], "adversarial_answer": adv_read.answers[i],
            "text_dominant": clean_read.answers[i] == item.text_emotion,
            "flipped": adv_read.answers[i] == target,
            "delta_logit_last": {"clean": float(clean_dl[i, -1]), "adversarial": float(adv_dl[i, -1])},
            "delta_logit_window": {"clean": float(clean_dl[i, first:last + 1].mean()),
                                   "adversarial": float(adv_dl[i, first:last + 1].mean())},
        })
    unit = UNIVERSAL_UNIT if config.universal else UNIT_CLIP
    dominant = [row for row in rows if row["text_dominant"]]

    def rate(chosen: list[dict], success: Callable[[dict], bool]) -> dict:
        return clustered_rate([success(r) for r in chosen], [r["clip_id"] for r in chosen], unit).as_dict()

    shift = adv_dl - clean_dl
    return {
        "method": method_name(config, prompt_label(setup)) + ("-transfer" if setup.transfer else ""),
        "transfer_from": setup.transfer,
        "model": {"id": adapter.model_id, "hash": model_hash(adapter), "n_layers": adapter.n_layers},
        "stimulus_hash": stimulus_set_hash(args.stimuli),
        "stimuli": args.stimuli or "seed set",
        "prompt": {"template": setup.template or "assert", "searched": setup.searched},
        "lang": args.lang,
        "clips": args.clips,
        "settings": asdict(config),
        "window": setup.window.as_dict(),
        "budget": {"linf": config.epsilon, "snr_db": config.snr_db},
        "perceptual": {
            "summary": {
                "snr_db_min": min((c["snr_db"] for c in clip_rows if c["snr_db"] is not None), default=None),
                "snr_db_mean": _mean(c["snr_db"] for c in clip_rows),
                "linf_max": max(c["linf"] for c in clip_rows), "l2_mean": _mean(c["l2"] for c in clip_rows),
                "stoi_mean": _mean(c["stoi"] for c in clip_rows), "pesq_wb_mean": _mean(c["pesq_wb"] for c in clip_rows),
            },
            "clips": clip_rows,
            "units": "snr_db: dB; linf, l2: full scale 1; stoi: 0..1; pesq_wb: MOS-LQO 1..4.64",
        },
        "flips": {
            "before": rate(rows, lambda r: r["clean_answer"] == r["target"]),
            "after": rate(rows, lambda r: r["flipped"]),
            "text_dominant": rate(dominant, lambda r: r["flipped"]),
            "evaluated_on": ("held-out sentences" if split and "held_out_sentences" in split
                             else "held-out clips" if split else "the attacked items"),
            "unit": unit,
            "interval": "95%, resampling clips (common.stats.clustered_rate)",
        },
        "delta_logit": {"unit": "logits, Δlogit = logit(T) − logit(A) (text label − voice label), logit lens at "
                                "the answer position; shift = attacked − clean, negative when the attack works",
                        "shift_last": float(shift[:, -1].mean()),
                        "shift_window": float(shift[:, first:last + 1].mean())},
        "persistence": persistence,
        "directions": {"key": setup.directions.key, "clips": setup.direction_clips,
                       "from": "training clips only" if split else "every audio-only clip of the language(s)"},
        "universal_split": split,
        "timing": {"steps": result.steps, "resumed_from": result.resumed_from, "queries": result.queries,
                   "seconds_optimising": result.seconds,
                   "seconds_per_step": result.seconds / max(result.steps, 1), "seconds_total": seconds,
                   "torch_threads": torch.get_num_threads(), "batch_rows": config.batch_rows},
        "loss": {"first": result.losses[0] if result.losses else None,
                 "last": result.losses[-1] if result.losses else None,
                 "best": min(result.losses) if result.losses else None},
        "items": rows,
    }


def _records(setup: Setup, config: pgd.PGDConfig, metrics: dict, out: Path, recorder: Recorder) -> list[str]:
    """Write the leaderboard records, one per language (as the probes' baselines and the prompt search write them,
    so an attack ranks beside them); a rerun that only re-measures reuses them."""
    adapter, args = setup.adapter, setup.args
    previous = out / "metrics.json"
    if metrics["timing"]["resumed_from"] == config.steps * config.restarts and previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8")).get("records") or []
        if old and all(Path(path).is_file() for path in old):
            return old
    method = metrics["method"]
    paths = []
    for lang in sorted({row["lang"] for row in metrics["items"]}):
        rows = [row for row in metrics["items"] if row["lang"] == lang]
        items = [{key: row[key] for key in ("item_id", "clip_id", "text_emotion", "flipped", "clean_answer",
                                            "adversarial_answer", "text_dominant")} for row in rows]
        shift = {span: float(np.mean([row[f"delta_logit_{span}"]["adversarial"] - row[f"delta_logit_{span}"]["clean"]
                                      for row in rows])) for span in ("last", "window")}
        settings = {**metrics["settings"], "lang": args.lang, "clips": args.clips, "stimuli": metrics["stimuli"],
                    "prompt": metrics["prompt"], "transfer_from": metrics["transfer_from"], "window": metrics["window"]}
        paths.append(recorder(
            method=method, settings=settings, model_id=adapter.model_id, model_hash=metrics["model"]["hash"],
            stimulus_hash=metrics["stimulus_hash"], lang=lang, budget=config.budget.as_record(), seed=config.seed,
            items=items, delta_last=shift["last"], delta_window=shift["window"],
            seconds=metrics["timing"]["seconds_total"], queries=metrics["timing"]["queries"], artifacts=out,
            window=(config.from_layer, config.target_layer),
            figures=["persistence.png"] + ([] if setup.transfer else ["curve.png"]),
            unit=metrics["flips"]["unit"]))
    return paths
