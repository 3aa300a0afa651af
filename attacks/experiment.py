"""`run_attack.py`'s one function: select the conflict items, attack them with `attacks.pgd`, measure, write.

Output folder (`--out`, default `<runs-dir>/attack-<timestamp>`):
    clean/<lang>/<clip>.wav, adv/<lang>/<clip>.wav   the clean clips and their adversarial versions (16-bit)
    checkpoint.pt                                    δ every --checkpoint-every steps; rerun with --out to resume
    metrics.json                                     budget, perceptual size, flips, persistence, per-item answers
    persistence.png                                  clean vs adversarial per layer, the attack window shaded
and one leaderboard record per language under `<runs-dir>/records/`. Every user error is raised before the folder
is created.

Flips. An item's target is the voice's emotion A (or `--target-emotion`). "before"/"after" count the conflict items
whose answer (the label word with the highest final logit) is the target, clean and attacked; "text_dominant"
counts, among the items whose clean answer was the text's emotion T, those whose attacked answer is the target.
The leaderboard record holds every evaluated conflict item with flipped = its attacked answer is the target, the
definition the baselines use, so the board compares attack and baselines on the same items.
"""
from __future__ import annotations

import argparse
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
from common import cli
from common.atomic import atomic_write_bytes, atomic_write_json
from common.errors import ModalflipError
from common.stats import wilson_interval
from models.loading import load_model, model_hash
from stimuli import spec
from probes.inputs import load_probe_set
from stimuli.audio_io import write_wav
from stimuli.conditions import Item, seed_items
from stimuli.manifest import stimulus_set_hash

CHECKPOINT = "checkpoint.pt"


def config_from_args(args: argparse.Namespace) -> pgd.PGDConfig:
    """The attack settings named on the command line (the rest keep `PGDConfig`'s defaults)."""
    target = spec.check_emotion(args.target_emotion) if args.target_emotion else None
    config = pgd.PGDConfig(
        epsilon=args.epsilon, snr_db=args.snr_db, steps=args.steps, from_layer=args.from_layer,
        target_layer=args.target_layer, final_weight=args.final_weight, target_emotion=target,
        universal=args.universal, eot=args.eot, checkpoint_every=args.checkpoint_every, seed=args.seed,
        persistence_weight=args.persistence_weight, lens_weight=args.lens_weight,
        prompts_per_clip=args.prompts_per_clip)
    config.budget  # an impossible budget is an error before anything loads
    return config


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
                             f"{target or 'none'}); name seed clips such as A7 or A7-en, see stimuli/seed/manifest.jsonl")
    return chosen


def universal_split(items: list[Item]) -> tuple[list[Item], list[Item], dict[str, list[str]]]:
    """(training items, held-out items, {"train": clip ids, "held_out": clip ids}). Per audio emotion, its clips
    sorted by (intensity, language, id) alternate between training and held out, so a universal δ is evaluated
    on clips (and, with both languages, sentences) it was not trained on."""
    clips: dict[str, list[tuple]] = {}
    for item in items:
        key = (item.intensity, item.lang, item.clip_id)
        if key not in clips.setdefault(item.audio_emotion, []):
            clips[item.audio_emotion].append(key)
    train_ids, held_ids = set(), set()
    for keys in clips.values():
        for rank, key in enumerate(sorted(keys)):
            (train_ids if rank % 2 == 0 else held_ids).add(key[2])
    if not held_ids:
        raise ModalflipError("--universal needs two clips of one voice emotion to hold one out; select more clips")
    split = {"train": sorted(train_ids), "held_out": sorted(held_ids)}
    return ([i for i in items if i.clip_id in train_ids], [i for i in items if i.clip_id in held_ids], split)


Recorder = Callable[..., str]  # keyword fields of `eval.records.make_record` -> path of the written record


def run_attack(args: argparse.Namespace, recorder: Recorder) -> int:
    """The whole `run_attack.py` run; returns the exit status. `recorder` writes the leaderboard record (it comes
    from the runner: attacks sit below eval and do not import it)."""
    started = time.time()
    console = Console()
    config = config_from_args(args)
    langs = cli.languages(args.lang)
    all_items = seed_items(langs, ("audio_only", "conflict"))
    attacked = select_items(all_items, args.clips, config.target_emotion)
    adapter = load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    pgd.check_config(adapter, config)
    if config.universal:
        train_items, eval_items, split = universal_split(attacked)
    else:
        train_items, eval_items, split = attacked, attacked, None
    clean_only = [item for item in all_items if item.condition == "audio_only"]
    directions, cached = direction_cache.load_or_compute(adapter, clean_only, Path(args.runs_dir) / "cache",
                                                         config.batch_rows)
    targets = [directions.index(pgd.target_of(item, config)) for item in eval_items]
    out = cli.out_dir(args, "attack")
    console.print(f"[bold]attack[/bold] {adapter.model_id} ({adapter.n_layers} layers) on {len(train_items)} "
                  f"prompts of {len({i.clip_id for i in train_items})} clips; window {config.from_layer}.."
                  f"{config.target_layer}; ε = {config.epsilon:g}; emotion directions "
                  f"{'from the cache' if cached else 'computed'} ({directions.key}); out {out}")

    result = _optimise(adapter, train_items, config, directions, out / CHECKPOINT, console)
    inputs = load_probe_set(adapter, attacked, pad=False)
    clean_waves = {clip_id: inputs.wave(clip_id) for clip_id in inputs.waves}
    adv_waves = {}
    for item in attacked:
        if item.clip_id not in adv_waves:
            clean = clean_waves[item.clip_id]
            adv_waves[item.clip_id] = (clean + result.perturbation(item, clean)).clamp(-1.0, 1.0)
    clean_read = read(adapter, inputs, eval_items, [clean_waves[i.clip_id] for i in eval_items], targets,
                      directions, config.batch_rows)
    adv_read = read(adapter, inputs, eval_items, [adv_waves[i.clip_id] for i in eval_items], targets, directions,
                    config.batch_rows)

    held_out = set(split["held_out"]) if split else set()
    clip_rows = _write_audio(out, attacked, clean_waves, adv_waves, adapter.sampling_rate, held_out)
    persistence = summarize(clean_read, adv_read, targets, (config.from_layer, config.target_layer))
    metrics = _metrics(adapter, args, config, eval_items, clean_read, adv_read, persistence, clip_rows, result,
                       split, time.time() - started)
    deepest = {k: "none" if v is None else v for k, v in persistence["deepest_separating_layer"].items()}
    title = (f"{adapter.model_id}: clean vs adversarial (ε = {config.epsilon:g}); deepest layer where the probe "
             f"reads the target: {deepest['clean']} → {deepest['adversarial']}")
    report.persistence_figure(persistence, out / "persistence.png", title)
    metrics["records"] = _records(adapter, args, config, metrics, out, recorder)
    atomic_write_json(out / "metrics.json", metrics)
    console.print(report.summary_table(metrics))
    console.print(report.clip_table(metrics))
    if not persistence["survives_further"]:
        console.print("[yellow]the target emotion does not separate deeper in the attacked audio than in the clean "
                      "audio at the answer position[/yellow]")
    console.print(f"wrote {out / 'metrics.json'}, {out / 'persistence.png'}, {len(clip_rows)} adversarial clips; "
                  f"leaderboard record(s) {', '.join(metrics['records'])}")
    return 0


def _optimise(adapter, items, config, directions, checkpoint: Path, console: Console) -> pgd.PGDResult:
    columns = [TextColumn("PGD"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:+.3f}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("pgd", total=config.steps, loss=float("nan"))

        def advance(step: int, parts: dict[str, float]) -> None:
            progress.update(task, completed=step + 1, loss=parts["loss"])

        if checkpoint.is_file():
            console.print(f"resuming from {checkpoint}")
        result = pgd.run(adapter, items, config, directions, checkpoint=checkpoint, callback=advance)
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


def _rate(k: int, n: int) -> dict:
    low, high = wilson_interval(k, n)
    return {"k": int(k), "n": int(n), "rate": k / n if n else None, "ci95": [low, high]}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def method_name(config: PGDConfig) -> str:
    """The leaderboard name of an attack: the terms its objective has (persistence in the window, counting the
    window's lens margin, and the final answer) and its mode, so that each objective ranks as its own method."""
    window = config.persistence_weight > 0 or config.lens_weight > 0
    objective = "+".join(part for part, used in (("persistence", window), ("answer", config.final_weight > 0)) if used)
    return (f"pgd-{objective}" + ("-universal" if config.universal else "")
            + ("-targeted" if config.target_emotion else ""))


def _metrics(adapter, args, config, items, clean_read, adv_read, persistence, clip_rows, result, split,
             seconds) -> dict:
    emotions = spec.emotions()
    voice = [emotions.index(item.audio_emotion) for item in items]
    text = [emotions.index(item.text_emotion) for item in items]
    clean_dl, adv_dl = delta_logit(clean_read, voice, text), delta_logit(adv_read, voice, text)
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
    dominant = [row for row in rows if row["text_dominant"]]
    shift = adv_dl - clean_dl
    return {
        "method": method_name(config),
        "model": {"id": adapter.model_id, "hash": model_hash(adapter), "n_layers": adapter.n_layers},
        "stimulus_hash": stimulus_set_hash(),  # the committed seed set, as the other runners record it
        "lang": args.lang,
        "clips": args.clips,
        "settings": asdict(config),
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
            "before": _rate(sum(r["clean_answer"] == r["target"] for r in rows), len(rows)),
            "after": _rate(sum(r["flipped"] for r in rows), len(rows)),
            "text_dominant": _rate(sum(r["flipped"] for r in dominant), len(dominant)),
            "evaluated_on": "held-out clips" if split else "the attacked items",
        },
        "delta_logit": {"unit": "logits, voice label − text label, logit lens at the answer position",
                        "shift_last": float(shift[:, -1].mean()), "shift_window": float(shift[:, first:last + 1].mean())},
        "persistence": persistence,
        "universal_split": split,
        "timing": {"steps": result.steps, "resumed_from": result.resumed_from, "queries": result.queries,
                   "seconds_optimising": result.seconds,
                   "seconds_per_step": result.seconds / max(result.steps, 1), "seconds_total": seconds,
                   "torch_threads": torch.get_num_threads()},
        "loss": {"first": result.losses[0] if result.losses else None,
                 "last": result.losses[-1] if result.losses else None},
        "items": rows,
    }


def _records(adapter, args, config, metrics, out: Path, recorder: Recorder) -> list[str]:
    """Write the leaderboard records, one per language (as the probes' baselines and the prompt search write them,
    so an attack ranks beside them); a rerun that only re-measures reuses them."""
    previous = out / "metrics.json"
    if metrics["timing"]["resumed_from"] == config.steps and previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8")).get("records") or []
        if old and all(Path(path).is_file() for path in old):
            return old
    method = method_name(config)
    paths = []
    for lang in sorted({row["lang"] for row in metrics["items"]}):
        rows = [row for row in metrics["items"] if row["lang"] == lang]
        items = [{key: row[key] for key in ("item_id", "flipped", "clean_answer", "adversarial_answer",
                                            "text_dominant")} for row in rows]
        shift = {span: float(np.mean([row[f"delta_logit_{span}"]["adversarial"] - row[f"delta_logit_{span}"]["clean"]
                                      for row in rows])) for span in ("last", "window")}
        paths.append(recorder(
            method=method, settings={**metrics["settings"], "lang": args.lang, "clips": args.clips},
            model_id=adapter.model_id, model_hash=metrics["model"]["hash"], stimulus_hash=metrics["stimulus_hash"],
            lang=lang, budget=config.budget.as_record(), seed=config.seed, items=items,
            delta_last=shift["last"], delta_window=shift["window"],
            seconds=metrics["timing"]["seconds_total"], queries=metrics["timing"]["queries"], artifacts=out,
            window=(config.from_layer, config.target_layer), figures=["persistence.png"]))
    return paths
