"""`python -m eval.results_page`: rerun the measured results on a built-in organism and write its results page.

Runs, each as its own process in a scratch runs folder: the probes (into the model's figures folder, then its model
card is re-rendered from them), a 500-trial prompt search, the attacks, the leaderboard and the three benchmarks.
`--model organism` (default) writes `docs/results.md` and `docs/sample-board.md`, `--model organism-pilot`
`docs/results-pilot.md` and `docs/sample-board-pilot.md`. The page gives every number with the command that printed
it, the commit, the date and the machine, so the page cannot drift from the code: rerun this command instead of
editing it. How long a full run takes with the two-window attack comparison below is not yet measured.

The attacks (English items, 60 APGD steps, seed 0) are a matched comparison over two persistence windows, residual
layers 5-20 and the window `run_attack.py --window-from` reads off the probes this page has just run: for each
window the default objective (persistence + lens + final answer) and persistence + lens alone, and, once (it does
not use the window), the final answer alone, each as a sweep over ε 0.002, 0.008, 0.03. `python -m eval.leaderboard
--compare` pairs the default with each of the other two at every ε and window; one figure draws every run's
text-dominant flips against ε and against the achieved SNR (`docs/figures/attack-budget-<model>.png`), and the
persistence figures at ε 0.008 are copied beside it. The runs are listed in `<runs-dir>/attacks.json`, which
`--transfer-from-runs` reads: given another page run's scratch folder (made on the other organism), this page
scores that run's adversarial clips at ε 0.008 on its own model without optimising, and its own clips on that run's
model, and adds a transfer table for each direction.

`--fast` is a smoke run of the same pipeline (English only, the probes on three seed clips, 3 trials, 1 attack step
on one clip at one budget and the probe window only, no benchmarks) into the scratch folder only: it checks that
the page can be made, its numbers are not results, and it touches nothing committed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

from attacks.experiment import sweep_summary
from attacks.report import budget_figure
from attacks.window import Window, from_probes
from common.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from common.cli import run_main
from common.errors import ModalflipError
from eval.leaderboard import comparison_text
from eval.paired import Comparison, compare
from eval.records import Record, artifacts_dir, code_version, load_records
from probes.answers import share_text

ROOT = Path(__file__).resolve().parent.parent
SEED_MANIFEST = ROOT / "stimuli" / "seed" / "manifest.jsonl"
FAST_CLIPS = ("A2-en", "A4-en", "A6-en")  # happy, sad, angry at normal intensity: pairs for both patch kinds
SHOWN_LAYERS = (0, 8, 15, 16, 17, 18, 20, 24, 28)
BENCHMARKS = ("bench.patching", "bench.attack", "bench.prompt_search")


@dataclass(frozen=True)
class PageModel:
    """A built-in model the page is made for: its --model name, the short name in its page's, board's and figures'
    file names, its probe figures folder, the module that re-renders its model card, and the card."""

    name: str
    slug: str
    figures: str
    card_module: str
    card: str

    @property
    def page(self) -> str:
        return "results.md" if self.slug == "organism" else f"results-{self.slug}.md"

    @property
    def board(self) -> str:
        return "sample-board.md" if self.slug == "organism" else f"sample-board-{self.slug}.md"


MODELS = {model.name: model for model in (
    PageModel("organism", "organism", "models/organism/figures", "models.organism.card", "models/organism/README.md"),
    PageModel("organism-pilot", "pilot", "models/pilot/figures", "models.pilot.card", "models/pilot/README.md"),
)}


@dataclass(frozen=True)
class Objective:
    """An attack objective of the comparison: its short name (folders, figures), its name on the page, the
    run_attack.py options that select it, and whether the persistence window enters it."""

    slug: str
    name: str
    options: tuple[str, ...]
    windowed: bool


OBJECTIVES = (
    Objective("default", "persistence + lens + final answer (default)", (), True),
    Objective("persistence", "persistence + lens alone", ("--final-weight", "0"), True),
    Objective("answer", "final answer alone", ("--persistence-weight", "0", "--lens-weight", "0"), False),
)
FIXED_WINDOW = ("5-20", ("--from-layer", "5", "--target-layer", "20"))  # also the answer alone's readout window
PROBE_WINDOW = "probes"
EPSILONS = (0.002, 0.008, 0.03)
BEYOND = (0.06, 0.12)  # the answer alone only: where its curve crosses one half, if it does
SHOWN_EPSILON = 0.008  # the budget of the copied persistence figures and of the transfer
ATTACK_STEPS = "60"
ATTACK_MANIFEST = "attacks.json"


@dataclass
class Step:
    """One command the page quotes: its argv after `python`, its wall time (s) and what it printed."""
    argv: list[str]
    seconds: float
    stdout: str

    @property
    def command(self) -> str:
        return "python " + shlex.join(self.argv)


def run_step(argv: Sequence[str], threads: int) -> Step:
    """Run `python ARGV` in the repository root with `threads` CPU threads; a `ModalflipError` if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), COLUMNS="140")
    command = "python " + shlex.join(argv)
    print(f"$ {command}", flush=True)
    started = time.time()
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise ModalflipError(f"`{command}` exited with status {done.returncode}; its last lines:\n{tail}")
    return Step(list(argv), round(time.time() - started, 1), done.stdout)


def machine(threads: int) -> str:
    """The machine in words: CPU model, logical CPUs, the threads the commands ran with, torch and Python."""
    model = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}, {cpus} CPUs available, {threads} torch threads (OMP_NUM_THREADS), "
            f"torch {metadata.version('torch')}, Python {platform.python_version()}, {platform.system()}")


def new_records(runs: Path, before: set[str]) -> list[Record]:
    """Records written to `runs` since `before` (a set of record ids), in writing order."""
    records, _ = load_records(runs)
    return sorted((r for r in records if r.record_id not in before), key=lambda r: r.created)


def record_ids(runs: Path) -> set[str]:
    return {r.record_id for r in load_records(runs)[0]}


def share(record: Record) -> str:
    """"k/n (rate) [low, high], N clips" of a record's flips, the interval (over clips) as the record gives it."""
    return (f"{record.flips}/{record.n_items} ({record.flip_rate:.2f}) "
            f"[{record.ci_low:.2f}, {record.ci_high:.2f}], {record.n_units} {record.ci_unit}"
            f"{'' if record.n_units == 1 else 's'}")


KIND_NAMES = {"text": "Patch Text", "audio": "Patch Audio", "audio_only": "Patch Audio, audio-only receiver"}


def probes_section(step: Step, summary: dict, figures: str | None) -> str:
    langs = summary["langs"]
    patching = summary["patching"]
    index = {layer: i for i, layer in enumerate(patching["layers"])}
    layers = [layer for layer in SHOWN_LAYERS if layer in index]
    takeover = summary.get("planted_takeover") or {}
    lines = [f"`{step.command}` ({step.seconds:.0f} s; stimuli: {summary['stimuli']}, hash "
             f"{summary['stimulus_hash'][:8]}; model {summary['model_hash'][:8]}; clips padded to "
             f"{summary['pad_seconds']} s). Shares with a 95% cluster-bootstrap interval over clips, the independent "
             "unit; layers are residual indices (0 = embeddings)"
             + (f"; the planted takeover is decoder layer {takeover['decoder_layer']}, whose output is residual "
                f"layer {takeover['residual_layer']}." if takeover else "."), "",
             "| language | conflict lens critical layer (per-item mean [95% CI]) | audio-only answers A | "
             "conflict answers T |", "|---|---|---|---|"]
    for lang in langs:
        accuracy, lens = summary["accuracy"][lang], summary["logit_lens"][lang]["conflict"]
        items = lens["critical_layer_items"]
        lines.append(f"| {lang} | {lens['critical_layer']} ({items['mean']:.1f} [{items['low']:.1f}, "
                     f"{items['high']:.1f}]) | {share_text(accuracy['audio_only']['answers_A'])} | "
                     f"{share_text(accuracy['conflict']['answers_T'])} |")
    lines += ["", "Flip rate toward T when the donor's text (Patch Text) or audio (Patch Audio) span is copied in at "
              "residual layer l (receiver: the consistent item, or the audio-only item):", "",
              "| language | patch | clips | " + " | ".join(f"l={layer}" for layer in layers) + " |",
              "|---|---|---:|" + "---:|" * len(layers)]
    for lang in langs:
        for kind, data in patching[lang].items():
            cells = [f"{data['flip_rate'][index[l]]:.2f} [{data['flip_low'][index[l]]:.2f}, "
                     f"{data['flip_high'][index[l]]:.2f}]" for l in layers]
            lines.append(f"| {lang} | {KIND_NAMES.get(kind, kind)} | {data['n_clips']} | " + " | ".join(cells) + " |")
    if figures:
        lines += ["", f"Figures: [logit lens]({figures}/logit_lens.png), [patching]({figures}/patching.png); "
                  "how to read them: [recipes/read-the-figures.md](recipes/read-the-figures.md)."]
    return "\n".join(lines)


def held_share(result: dict) -> str:
    """'32/32 (1.00) [0.68, 1.00], 8 clips' of a held-out evaluation in best_prompts.json."""
    return (f"{result['flips']}/{result['n_items']} ({result['flip_rate']:.2f}) [{result['ci'][0]:.2f}, "
            f"{result['ci'][1]:.2f}], {result['n_units']} clips")


def search_section(step: Step, best: dict, records: list[Record]) -> str:
    heldout, top = best["heldout"], best["best"][0]
    seed = heldout["seed_prompt"]
    prompt = next(iter(top["prompt"].values()))
    slots = ", ".join(f"{key}={value}" for key, value in top["slots"].items())
    return "\n".join([
        f"`{step.command}` ({step.seconds:.0f} s; {best['finished_trials']} finished trials, "
        f"{best['this_run']['scored']} scored in full this run, prefix-cache hit rate "
        f"{best['this_run']['prefix_hit_rate']:.2f})", "",
        f"Held out (clips {', '.join(best['heldout_clips'])}, never scored by the search): the best prompt (trial "
        f"{heldout['trial']}) moves the answer to the voice's emotion on {held_share(heldout)}; the seed conflict "
        f"prompt on {held_share(dict(seed, n_items=heldout['n_items'], n_units=heldout['n_units']))}. Per "
        f"language, the leaderboard records: {'; '.join(f'{r.lang} {share(r)}' for r in records)}.", "",
        f"Best prompt: {slots}", "", "```text", f"system: {prompt['system']}", f"user: {prompt['user']}", "```"])


@dataclass
class AttackRun:
    """One run_attack.py sweep of the comparison: its objective, window ("5-20", "probes"; None for an objective
    that does not use one), its folder, the command and, per ε, its record, metrics and budget folder."""

    objective: Objective
    window: str | None
    out: Path
    step: Step
    budgets: dict[float, tuple[Record, dict, Path]]

    @property
    def layers(self) -> tuple[int, int]:
        window = next(iter(self.budgets.values()))[1]["window"]
        return window["from"], window["to"]

    @property
    def label(self) -> str:
        """'persistence + lens alone, layers 18–18 (probes)'; the answer alone has no window."""
        if self.window is None:
            return self.objective.name
        first, last = self.layers
        return f"{self.objective.name}, layers {first}–{last}{' (probes)' if self.window == PROBE_WINDOW else ''}"

    @property
    def slug(self) -> str:
        return self.objective.slug + (f"-{self.window}" if self.window else "")


def run_attacks(windows: list[tuple[str, tuple[str, ...]]], epsilons: Sequence[float], options: list[str],
                runs: Path, threads: int, beyond: Sequence[float] = ()) -> list[AttackRun]:
    """Every objective over every window (once for the answer alone, with the fixed window as its readout), each a
    sweep over `epsilons`, with the same `options` (steps, language, clips, model, runs folder); the answer alone's
    sweep goes on over the larger budgets `beyond`, to show where its curve crosses one half."""
    attacks = []
    for objective in OBJECTIVES:
        for window, window_options in (windows if objective.windowed else [(None, FIXED_WINDOW[1])]):
            before = record_ids(runs)
            out = runs / f"attack-{objective.slug}" if window is None else runs / f"attack-{objective.slug}-{window}"
            budgets = [*epsilons, *(beyond if objective.slug == "answer" else ())]
            step = run_step(["run_attack.py", *objective.options, *window_options, "--epsilon",
                             ",".join(f"{eps:g}" for eps in budgets), *options, "--out", shown(out)], threads)
            budgets = {}
            for record in new_records(runs, before):
                folder = artifacts_dir(record, runs)
                budgets[record.budget["linf"]] = (record, json.loads((folder / "metrics.json").read_text()), folder)
            attacks.append(AttackRun(objective, window, out, step, budgets))
    return attacks


def write_attack_manifest(path: Path, attacks: list[AttackRun], model: str, clips: str | None) -> Path:
    """`attacks.json`: the model, the attacked language and clips, and every run's objective, window and budget
    folders (relative to the runs folder), for another page's `--transfer-from-runs`."""
    first = next(iter(attacks[0].budgets.values()))[1]
    return atomic_write_json(path, {
        "model": model, "model_id": first["model"]["id"], "model_hash": first["model"]["hash"], "lang": "en",
        "clips": clips,
        "runs": [{"objective": run.objective.slug, "name": run.objective.name, "window": run.window,
                  "layers": list(run.layers), "budgets": {f"{eps:g}": str(folder.relative_to(path.parent))
                                                          for eps, (_, _, folder) in sorted(run.budgets.items())}}
                 for run in attacks]})


def read_attack_manifest(runs_dir: str) -> dict:
    """Another page run's `attacks.json`; a `ModalflipError` when `runs_dir` holds none or it lacks ε 0.008."""
    path = Path(runs_dir) / ATTACK_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        missing = [run["objective"] for run in manifest["runs"] if f"{SHOWN_EPSILON:g}" not in run["budgets"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModalflipError(f"--transfer-from-runs {runs_dir} holds no readable {ATTACK_MANIFEST}; give the scratch "
                             "runs folder of a finished python -m eval.results_page run") from None
    if missing:
        raise ModalflipError(f"--transfer-from-runs {runs_dir}: the runs of {', '.join(missing)} have no ε "
                             f"{SHOWN_EPSILON:g} budget to transfer")
    return manifest


def attack_section(attacks: list[AttackRun]) -> str:
    """One row per budget of every run: objective and window, ε, the attacked conflict items it flipped and the
    text-dominant ones (both with intervals over clips), and the perceptual size of its perturbations."""
    lines = ["| objective, window | command | ε | conflict answers on the voice's emotion [95% CI] | "
             "text-dominant answers flipped [95% CI] | SNR min / mean (dB) | STOI | PESQ | run time (all ε) |",
             "|---|---|---:|---|---|---|---:|---:|---:|"]
    for run in attacks:
        for eps, (record, metrics, _) in sorted(run.budgets.items()):
            size = metrics["perceptual"]["summary"]
            lines.append(
                f"| {run.label} | `{run.step.command}` | {eps:g} | {share(record)} | "
                f"{rate_text(metrics['flips']['text_dominant'])} | {size['snr_db_min']:.1f} / "
                f"{size['snr_db_mean']:.1f} | {_number(size.get('stoi_mean'), 3)} | "
                f"{_number(size.get('pesq_wb_mean'), 2)} | {run.step.seconds:.0f} s |")
    return "\n".join(lines)


def rate_text(rate: dict) -> str:
    """'k/n [low, high], N clips' of a flips entry of metrics.json (the interval over its unit)."""
    return (f"{rate['k']}/{rate['n']} [{rate['ci95'][0]:.2f}, {rate['ci95'][1]:.2f}], {rate['n_units']} "
            f"{rate['unit']}{'' if rate['n_units'] == 1 else 's'}")


def _number(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def budget_figures(attacks: list[AttackRun], model: PageModel, folder: Path) -> tuple[Path, list[tuple[str, Path]]]:
    """The page's budget figure (every run, text-dominant flips against ε and achieved SNR, intervals over clips)
    and each run's persistence figure at ε 0.008, copied as persistence-<model>-<objective>[-<window>].png; returns
    (the budget figure, [(run label, persistence copy)])."""
    curves = [(run.label, sweep_summary([(bfolder, metrics) for _, (_, metrics, bfolder)
                                         in sorted(run.budgets.items())], run.out)) for run in attacks]
    budget = budget_figure(curves, folder / f"attack-budget-{model.slug}.png",
                           f"{model.name}: text-dominant answers flipped against budget (English, 95% intervals "
                           "over clips)")
    copies = []
    for run in attacks:
        if SHOWN_EPSILON in run.budgets:
            source = run.budgets[SHOWN_EPSILON][2] / "persistence.png"
            copies.append((run.label, atomic_write_bytes(folder / f"persistence-{model.slug}-{run.slug}.png",
                                                         source.read_bytes())))
    return budget, copies


@dataclass
class Paired:
    """One matched comparison: the window's label, ε, the two records and the command that prints the result."""

    window: str
    epsilon: float
    a: Record
    b: Record
    b_name: str
    result: Comparison
    step: Step


def run_comparisons(attacks: list[AttackRun], shown_runs: str, threads: int) -> list[Paired]:
    """At every ε of every window: the default against the answer alone and against persistence + lens alone, as
    `python -m eval.leaderboard --compare` prints it (the table's numbers are that output's)."""
    answer = next(run for run in attacks if run.objective.slug == "answer")
    paired = []
    for default in (run for run in attacks if run.objective.slug == "default"):
        persistence = next(run for run in attacks if run.objective.slug == "persistence"
                           and run.window == default.window)
        first, last = default.layers
        for eps in sorted(default.budgets):
            for other, name in ((answer, answer.objective.name), (persistence, persistence.objective.name)):
                a, b = default.budgets[eps][0], other.budgets[eps][0]
                step = run_step(["-m", "eval.leaderboard", "--runs-dir", shown_runs, "--compare", a.short_id,
                                 b.short_id], threads)
                result = compare(a, b)
                if comparison_text(a, b, result) != step.stdout.strip():
                    raise RuntimeError(f"`{step.command}` printed another comparison than eval.paired computes here")
                label = f"{first}–{last}" + (" (probes)" if default.window == PROBE_WINDOW else "")
                paired.append(Paired(label, eps, a, b, name, result, step))
    return paired


def comparison_section(paired: list[Paired]) -> str:
    lines = ["The default objective against each of the other two, same seed, steps, optimiser, clips and budget, "
             "paired on the same clips and claims: the difference of flip rates (conflict answers on the voice's "
             "emotion) with a 95% paired cluster-bootstrap interval over clips and an exact sign-flip test over "
             "clips, as the command in each row prints it.", "",
             "| window (layers) | ε | default vs | default | other | default − other [95% CI] | clips where "
             "default / other flipped more | p (sign-flip over clips) | command |",
             "|---|---:|---|---:|---:|---|---|---:|---|"]
    for row in paired:
        test = row.result.test
        lines.append(f"| {row.window} | {row.epsilon:g} | {row.b_name} | {test.rate_a:.3f} | {test.rate_b:.3f} | "
                     f"{test.difference:+.3f} [{test.low:+.3f}, {test.high:+.3f}] | {test.units_a_more} / "
                     f"{test.units_b_more} of {test.n_units} | {test.p_value:.3g} | `{row.step.command}` |")
    return "\n".join(lines)


@dataclass
class Transfer:
    """One source run's clips at ε 0.008 scored on this page's model: the source's manifest entry, its metrics,
    this model's metrics and the command."""

    entry: dict
    source: dict
    here: dict
    step: Step


def run_transfers(manifest: dict, source_runs: Path, options: list[str], runs: Path, threads: int) -> list[Transfer]:
    """`run_attack.py --transfer-from` every run of another page's manifest at ε 0.008, on this page's model."""
    clips = ["--clips", manifest["clips"]] if manifest.get("clips") else []
    transfers = []
    for entry in manifest["runs"]:
        folder = source_runs / entry["budgets"][f"{SHOWN_EPSILON:g}"]
        name = entry["objective"] + (f"-{entry['window']}" if entry["window"] else "")
        out = runs / f"transfer-{name}"
        step = run_step(["run_attack.py", "--transfer-from", shown(folder), "--lang", manifest["lang"], *clips,
                         *options, "--out", shown(out)], threads)
        transfers.append(Transfer(entry, json.loads((folder / "metrics.json").read_text()),
                                  json.loads((out / "metrics.json").read_text()), step))
    return transfers


def transfer_section(transfers: list[Transfer], model: str) -> str:
    lines = [f"The adversarial clips of another organism's page run at ε {SHOWN_EPSILON:g}, scored on the {model} "
             "without re-optimising (`run_attack.py --transfer-from`). Shares with 95% intervals over clips, the "
             "unit; the text-dominant items are those whose clean answer followed the text on the model named.", "",
             "| objective | window (layers) | source model | on the source: conflict answers on the voice's emotion "
             f"| on the source: text-dominant flipped | on the {model}: conflict answers on the voice's emotion | on "
             f"the {model}: text-dominant flipped | unit | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in transfers:
        entry, source, here = row.entry, row.source, row.here
        window = "–" if entry["window"] is None else (
            f"{entry['layers'][0]}–{entry['layers'][1]}" + (" (probes)" if entry["window"] == PROBE_WINDOW else ""))
        lines.append(f"| {entry['name']} | {window} | {source['model']['id']} ({source['model']['hash'][:8]}) | "
                     f"{rate_text(source['flips']['after'])} | {rate_text(source['flips']['text_dominant'])} | "
                     f"{rate_text(here['flips']['after'])} | {rate_text(here['flips']['text_dominant'])} | "
                     f"{here['flips']['unit']}s | `{row.step.command}` |")
    return "\n".join(lines)


def attacks_intro(fast: bool, window: Window, epsilons: Sequence[float]) -> str:
    steps = "1 step" if fast else f"{ATTACK_STEPS} steps"
    budgets = (f"at ε {epsilons[0]:g}" if len(epsilons) == 1 else
               f"over ε {', '.join(f'{eps:g}' for eps in epsilons)} as one sweep (each larger ball starts from the "
               "smaller one's best δ)")
    probe_window = (f"the window read off the probes above (`--window-from`: from the first layer ≥ 1 where the "
                    f"audio-only lens reads the voice, its 95% interval below 0, to the conflict critical layer), "
                    f"here layers {window.first}–{window.last} in English")
    beyond = ", ".join(f"{eps:g}" for eps in BEYOND)
    further = "" if fast else f" and goes on to ε {beyond}, to show where it crosses one half"
    windows = (f"The persistence window is {probe_window} (the full page also runs layers 5–20)." if fast else
               f"Two persistence windows: residual layers 5–20, and {probe_window}.")
    return (f"English conflict items{' of clip A4' if fast else ''}, {steps} of APGD (the default optimiser), seed "
            f"0; every run has the same settings but its objective and window, and runs {budgets}. {windows} The "
            f"final answer alone does not use a window (its Δlogit and persistence readouts cover layers "
            f"5–20){further}. A flip is a conflict answer that names the voice's emotion after the attack; "
            "text-dominant counts only the items whose clean answer followed the text. Intervals: 95% cluster "
            "bootstrap over clips, the unit.\n")


def figures_text(budget: Path, copies: list[tuple[str, Path]], page_dir: Path) -> str:
    lines = [f"![Text-dominant answers flipped against ε and against achieved SNR]({link(budget, page_dir)})", "",
             "*Figure: share of text-dominant answers flipped (95% intervals over clips, the unit) against the L∞ "
             "budget ε (log scale) and against the achieved mean SNR (dB), one line per objective and window, from "
             "the runs in the table.*"]
    if copies:
        lines += ["", f"Persistence at ε {SHOWN_EPSILON:g} (probe projection and accuracy per layer, clean vs "
                  "adversarial, the window shaded): "
                  + ", ".join(f"[{label}]({link(path, page_dir)})" for label, path in copies) + "."]
    return "\n".join(lines)


def link(path: Path, page_dir: Path) -> str:
    return os.path.relpath(path, page_dir)


def shown(path: Path) -> str:
    """A path as the page quotes it: relative to the repository root when inside it."""
    return os.path.relpath(path, ROOT) if path.resolve().is_relative_to(ROOT) else str(path)


def board_section(step: Step, board: str, board_link: str | None) -> str:
    where = "the scratch folder's board" if board_link is None else f"[{Path(board_link).name}]({board_link})"
    return (f"`{step.command}` wrote {where}: every run above ranked on one board, one table per model, stimulus "
            f"set, language and budget. Its first table:\n\n" + first_table(board))


def first_table(board: str) -> str:
    """The first `## ` group of a Markdown board, up to the next one."""
    groups = board.split("\n## ")
    return "## " + groups[1].strip() if len(groups) > 1 else board.strip()


def bench_section(steps: list[Step]) -> str:
    parts = []
    for step in steps:
        parts += [f"`{step.command}` ({step.seconds:.0f} s):", "", "```text", step.stdout.rstrip(), "```", ""]
    return "\n".join(parts).rstrip()


def header(model: PageModel, command: str, fast: bool, version: str, today: str, machine_text: str,
           takeover: dict | None, page_dir: Path, trained: dict | None = None) -> str:
    kind = ("**Smoke run (`--fast`): tiny trial and step counts on a few English clips. These numbers check that the "
            "page can be made; they are not results.**\n\n" if fast else "")
    planted = ("" if takeover is None else f" with a planted text takeover at decoder layer "
               f"{takeover['decoder_layer']} (residual layer {takeover['residual_layer']})")
    if trained:
        planted = (f" whose dynamics are trained in, not planted: the lens at the answer toward the voice through "
                   f"residual layer {trained['voice_through_residual']}, toward the answer at residual layer "
                   f"{trained['answer_at_residual']}")
    card = f" ([model card]({link(ROOT / model.card, page_dir)}))" if (ROOT / model.card).is_file() else ""
    writes = ("writes this page and everything else into its scratch folder" if fast else
              f"rewrites this page, `docs/{model.board}`, the `docs/figures/*-{model.slug}*.png` figures, the "
              f"{model.name}'s probe figures and its model card")
    return (f"# Results on the built-in {model.name}\n\n{kind}Generated by `{command}` at commit `{version}` on "
            f"{today}; machine: {machine_text}. Do not edit by hand: rerun that command, which reruns every command "
            f"quoted below in a fresh runs folder and {writes}. The {model.name} is a testbed{planted}{card}; none of "
            "these numbers is a claim about a 7B model.\n")


def page_command(args: argparse.Namespace) -> str:
    """The command that remakes the page (the scratch folder and --threads aside)."""
    words = ["python", "-m", "eval.results_page"]
    words += ["--model", args.model] if args.model != "organism" else []
    words += ["--transfer-from-runs", args.transfer_from_runs] if args.transfer_from_runs else []
    words += ["--no-bench"] if args.no_bench else []
    words += ["--fast"] if args.fast else []
    return shlex.join(words)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.results_page", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="organism", choices=sorted(MODELS),
                        help="the built-in model the page is about")
    parser.add_argument("--fast", action="store_true",
                        help="smoke run: tiny counts, English only, no benchmarks; writes only into --runs-dir")
    parser.add_argument("--runs-dir", default=None,
                        help="scratch runs folder (default: a new runs/results-<time> folder)")
    parser.add_argument("--page", default=None,
                        help="where to write the page (default: docs/results.md for the organism, "
                             "docs/results-pilot.md for the pilot; with --fast <runs-dir>/results.md)")
    parser.add_argument("--transfer-from-runs", default=None, metavar="DIR",
                        help="the scratch runs folder of another results page run (on the other organism): score "
                             f"its adversarial clips at ε {SHOWN_EPSILON:g} on --model and add a transfer table")
    parser.add_argument("--no-bench", action="store_true", help="skip the benchmarks")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count() or 1, help="CPU threads for every command")
    args = parser.parse_args(argv)
    model = MODELS[args.model]
    source = read_attack_manifest(args.transfer_from_runs) if args.transfer_from_runs else None
    runs = Path(args.runs_dir or ROOT / "runs" / f"results-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if runs.exists() and any(runs.iterdir()):
        raise ModalflipError(f"{runs} is not empty: give --runs-dir a new folder, so that no older record reaches "
                             "the page")
    runs.mkdir(parents=True, exist_ok=True)
    page = Path(args.page) if args.page else (runs / "results.md" if args.fast else ROOT / "docs" / model.page)
    board_path = runs / "sample-board.md" if args.fast else ROOT / "docs" / model.board
    figures = runs / "figures" if args.fast else ROOT / "docs" / "figures"
    version, today = code_version(), datetime.date.today().isoformat()
    shown_runs = shown(runs)
    common = ["--model", args.model, "--runs-dir", shown_runs]
    if args.fast:
        common += ["--lang", "en"]

    probes_out = runs / "probes" if args.fast else ROOT / model.figures
    probe_args = ["run_probes.py", "--out", shown(probes_out), *common]
    if args.fast:
        mini = runs / "seed-subset.jsonl"
        rows = [json.loads(line) for line in SEED_MANIFEST.read_text().splitlines() if line.strip()]
        mini.write_text("".join(json.dumps(dict(row, path=str(SEED_MANIFEST.parent / row["path"]))) + "\n"
                                for row in rows if row["id"] in FAST_CLIPS))
        probe_args += ["--stimuli", str(mini), "--n-boot", "100"]
    probes = run_step(probe_args, args.threads)
    summary = json.loads((probes_out / "summary.json").read_text())
    window = from_probes(probes_out, ["en"])  # the attacks' second window; an empty one stops the page here
    if not args.fast:
        run_step(["-m", model.card_module], args.threads)

    before = record_ids(runs)
    search_out = runs / "prompt-search"
    search = run_step(["run_prompt_search.py", "--trials", "3" if args.fast else "500", "--out", shown(search_out),
                       *common], args.threads)
    search_records = [r for r in new_records(runs, before) if r.method == "prompt-search"]
    best = json.loads((search_out / "best_prompts.json").read_text())

    clips = "A4" if args.fast else None
    attack_options = ["--steps", "1" if args.fast else ATTACK_STEPS, *(["--clips", clips] if clips else []),
                      "--model", args.model, "--lang", "en", "--runs-dir", shown_runs]
    windows = [(PROBE_WINDOW, ("--window-from", shown(probes_out)))]
    windows = windows if args.fast else [FIXED_WINDOW, *windows]
    epsilons = (SHOWN_EPSILON,) if args.fast else EPSILONS
    attacks = run_attacks(windows, epsilons, attack_options, runs, args.threads, () if args.fast else BEYOND)
    write_attack_manifest(runs / ATTACK_MANIFEST, attacks, args.model, clips)
    paired = run_comparisons(attacks, shown_runs, args.threads)
    budget, copies = budget_figures(attacks, model, figures)
    transfers = [] if source is None else run_transfers(source, Path(args.transfer_from_runs).resolve(),
                                                       ["--model", args.model, "--runs-dir", shown_runs], runs,
                                                       args.threads)
    # and the other way: this page's clips scored on the other page's model, so one page holds both directions
    back = [] if source is None else run_transfers(read_attack_manifest(str(runs)), runs,
                                                   ["--model", source["model"], "--runs-dir", shown_runs],
                                                   runs / "back", args.threads)

    board = run_step(["-m", "eval.leaderboard", "--runs-dir", shown_runs, "--markdown", shown(board_path)],
                     args.threads)
    board_header = (f"# Sample leaderboard\n\nWritten by `{page_command(args)}` (commit `{version}`, {today}): the "
                    f"board of its runs on the {model.name}, as `{board.command}` wrote it. The commands and the "
                    f"machine are on [{page.name}]({link(page, board_path.parent)}).\n\n")
    board_text = board_path.read_text()
    atomic_write_text(board_path, board_header + board_text)

    benches = [] if args.fast or args.no_bench else [
        run_step(["-m", name, "--threads", str(args.threads)], args.threads) for name in BENCHMARKS]
    sections = [header(model, page_command(args), args.fast, version, today, machine(args.threads),
                       summary.get("planted_takeover"), page.parent, summary.get("trained_takeover")),
                "## Probes\n", probes_section(probes, summary, None if args.fast else link(ROOT / model.figures,
                                                                                          page.parent)),
                "\n## Prompt search\n", search_section(search, best, search_records),
                "\n## Attacks\n", attacks_intro(args.fast, window, epsilons), attack_section(attacks), "",
                figures_text(budget, copies, page.parent),
                "\n### Matched comparisons\n", comparison_section(paired)]
    if transfers:
        sections += ["\n### Transfer\n", transfer_section(transfers, model.name), "",
                     transfer_section(back, MODELS[source["model"]].name)]
    sections += ["\n## Leaderboard\n", board_section(board, board_text,
                                                      None if args.fast else link(board_path, page.parent))]
    if benches:
        sections += ["\n## Benchmarks\n", "Ratios measured in one run each, threads pinned; the benchmarks time the "
                     "organism whichever model the page is about.\n", bench_section(benches)]
    atomic_write_text(page, "\n".join(sections).rstrip() + "\n")
    print(f"wrote {page} and {board_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
