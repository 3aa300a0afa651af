"""`python -m eval.results_page`: rerun the measured results on the built-in organism and write `docs/results.md`.

Runs, each as its own process in a scratch runs folder: the probes (into `models/organism/figures`, then the model
card is re-rendered from them), a 500-trial prompt search, the four attack variants the README compares, the
leaderboard (into `docs/sample-board.md`) and the three benchmarks. The page gives every number with the command
that printed it, the commit, the date and the machine, so the page cannot drift from the code: rerun this command
instead of editing it. About 20 minutes on 2 CPU cores (probes 1-2, search 3-6, attacks 4-6, benchmarks 8).

`--fast` is a smoke run of the same pipeline (English only, the probes on three seed clips, 3 trials, 1 attack step
on one clip, no benchmarks) into the scratch folder only: it checks that the page can be made, its numbers are not
results, and it touches nothing committed.
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

from common.atomic import atomic_write_text
from common.cli import run_main
from common.errors import ModalflipError
from eval.records import Record, artifacts_dir, code_version, load_records
from probes.answers import share_text

ROOT = Path(__file__).resolve().parent.parent
FIGURES = Path("models/organism/figures")
SEED_MANIFEST = ROOT / "stimuli" / "seed" / "manifest.jsonl"
FAST_CLIPS = ("A2-en", "A4-en", "A6-en")  # happy, sad, angry at normal intensity: pairs for both patch kinds
SHOWN_LAYERS = (0, 8, 15, 16, 17, 18, 20, 24, 28)

# (the objective's name on the page, the options that select it); the default objective first, as a budget sweep;
# all at the same seed, steps and optimiser, so that the three objectives form a matched comparison at ε 0.002
ATTACKS = (
    ("persistence + lens + final answer (default)", ["--epsilon", "0.002,0.008"]),
    ("persistence + lens alone", ["--final-weight", "0"]),
    ("final answer alone", ["--persistence-weight", "0", "--lens-weight", "0"]),
)
ATTACK_STEPS = "60"
BENCHMARKS = ("bench.patching", "bench.attack", "bench.prompt_search")


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
    shown = "python " + shlex.join(argv)
    print(f"$ {shown}", flush=True)
    started = time.time()
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise ModalflipError(f"`{shown}` exited with status {done.returncode}; its last lines:\n{tail}")
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


def attack_section(rows: list[tuple[str, Step, list[tuple[Record, dict]]]]) -> str:
    """One row per record: its objective, budget, the attacked conflict items it flipped and the text-dominant ones
    (both with intervals over clips), and the perceptual size of its perturbations."""
    lines = ["| objective | command | language | ε | conflict answers on the voice's emotion [95% CI] | "
             "text-dominant answers flipped [95% CI] | SNR min / mean (dB) | STOI | PESQ | time |",
             "|---|---|---|---:|---|---|---|---:|---:|---:|"]
    for name, step, measured in rows:
        for record, metrics in measured:
            size, dominant = metrics["perceptual"]["summary"], metrics["flips"]["text_dominant"]
            lines.append(
                f"| {name} | `{step.command}` | {record.lang} | {record.budget.get('linf', 0):g} | {share(record)} | "
                f"{dominant['k']}/{dominant['n']} [{dominant['ci95'][0]:.2f}, {dominant['ci95'][1]:.2f}] | "
                f"{size['snr_db_min']:.1f} / {size['snr_db_mean']:.1f} | {_number(size.get('stoi_mean'), 3)} | "
                f"{_number(size.get('pesq_wb_mean'), 2)} | {step.seconds:.0f} s |")
    return "\n".join(lines)


def _number(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def attack_metrics(records: list[Record], runs: Path) -> list[tuple[Record, dict]]:
    """Each attack record with the metrics.json of its budget's folder."""
    return [(record, json.loads((artifacts_dir(record, runs) / "metrics.json").read_text())) for record in records]


def comparison_section(steps: list[tuple[str, Step]]) -> str:
    parts = ["The three objectives at ε 0.002, same seed, steps and optimiser, paired on the same clips and claims "
             "(`--compare`: paired cluster bootstrap of the difference, exact sign-flip test over clips):", ""]
    for name, step in steps:
        parts += [f"{name}: `{step.command}`", "", "```text", step.stdout.rstrip(), "```", ""]
    return "\n".join(parts).rstrip()


def board_section(step: Step, board: str, fast: bool) -> str:
    where = "the scratch folder's `sample-board.md`" if fast else "[sample-board.md](sample-board.md)"
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


def header(fast: bool, version: str, today: str, machine_text: str) -> str:
    kind = ("**Smoke run (`--fast`): tiny trial and step counts on a few English clips. These numbers check that the "
            "page can be made; they are not results.**\n\n" if fast else "")
    return (f"# Results on the built-in organism\n\n{kind}Generated by `python -m eval.results_page` at commit "
            f"`{version}` on {today}; machine: {machine_text}. Do not edit by hand: rerun that command, which "
            "reruns every command quoted below in a fresh runs folder and rewrites this page, "
            "`docs/sample-board.md`, the organism's probe figures and its model card. The organism is a testbed "
            "with a planted text takeover at layer K = 16 ([model card](../models/organism/README.md)); none of "
            "these numbers is a claim about a 7B model.\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.results_page", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--fast", action="store_true",
                        help="smoke run: tiny counts, English only, no benchmarks; writes only into --runs-dir")
    parser.add_argument("--runs-dir", default=None,
                        help="scratch runs folder (default: a new runs/results-<time> folder)")
    parser.add_argument("--page", default=None,
                        help="where to write the page (default: docs/results.md, with --fast <runs-dir>/results.md)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count() or 1, help="CPU threads for every command")
    args = parser.parse_args(argv)
    runs = Path(args.runs_dir or ROOT / "runs" / f"results-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if runs.exists() and any(runs.iterdir()):
        raise ModalflipError(f"{runs} is not empty: give --runs-dir a new folder, so that no older record reaches "
                             "the page")
    runs.mkdir(parents=True, exist_ok=True)
    page = Path(args.page) if args.page else (runs / "results.md" if args.fast else ROOT / "docs" / "results.md")
    board_path = runs / "sample-board.md" if args.fast else ROOT / "docs" / "sample-board.md"
    version, today = code_version(), datetime.date.today().isoformat()
    shown_runs = os.path.relpath(runs, ROOT) if runs.is_relative_to(ROOT) else str(runs)
    common = ["--runs-dir", shown_runs]
    if args.fast:
        common += ["--lang", "en"]

    probes_out = runs / "probes" if args.fast else ROOT / FIGURES
    probe_args = ["run_probes.py", "--out", str(probes_out) if args.fast else str(FIGURES), *common]
    if args.fast:
        mini = runs / "seed-subset.jsonl"
        rows = [json.loads(line) for line in SEED_MANIFEST.read_text().splitlines() if line.strip()]
        mini.write_text("".join(json.dumps(dict(row, path=str(SEED_MANIFEST.parent / row["path"]))) + "\n"
                                for row in rows if row["id"] in FAST_CLIPS))
        probe_args += ["--stimuli", str(mini), "--n-boot", "100"]
    probes = run_step(probe_args, args.threads)
    summary = json.loads((probes_out / "summary.json").read_text())
    if not args.fast:
        run_step(["-m", "models.organism.card"], args.threads)

    before = record_ids(runs)
    search_out = runs / "prompt-search"
    search = run_step(["run_prompt_search.py", "--trials", "3" if args.fast else "500", "--out", str(search_out),
                       *common], args.threads)
    search_records = [r for r in new_records(runs, before) if r.method == "prompt-search"]
    best = json.loads((search_out / "best_prompts.json").read_text())

    attacks = []
    for i, (name, options) in enumerate(ATTACKS):
        before = record_ids(runs)
        out = runs / f"attack-{i + 1}"
        small = ["--steps", "1", "--clips", "A4"] if args.fast else ["--steps", ATTACK_STEPS, "--lang", "en"]
        step = run_step(["run_attack.py", "--target-layer", "15", *options, *small, "--out", str(out), *common],
                        args.threads)
        attacks.append((name, step, attack_metrics(new_records(runs, before), runs)))
    matched = {name: next(r for r, _ in measured if r.budget.get("linf") == 0.002 and r.lang == "en")
               for name, _, measured in attacks}
    default = matched[ATTACKS[0][0]]
    comparisons = [(f"default vs {name}", run_step(["-m", "eval.leaderboard", "--runs-dir", shown_runs, "--compare",
                                                    default.short_id, record.short_id], args.threads))
                   for name, record in matched.items() if record is not default]

    board = run_step(["-m", "eval.leaderboard", "--runs-dir", shown_runs, "--markdown", str(board_path)], args.threads)
    board_header = (f"# Sample leaderboard\n\nWritten by `python -m eval.results_page` (commit `{version}`, {today}): "
                    f"the board of its runs, as `{board.command}` wrote it. The commands and the machine are on "
                    "[results.md](results.md).\n\n")
    board_text = board_path.read_text()
    atomic_write_text(board_path, board_header + board_text)

    benches = [] if args.fast else [run_step(["-m", name, "--threads", str(args.threads)], args.threads)
                                    for name in BENCHMARKS]
    sections = [header(args.fast, version, today, machine(args.threads)),
                "## Probes\n", probes_section(probes, summary, None if args.fast else f"../{FIGURES}"),
                "\n## Prompt search\n", search_section(search, best, search_records),
                "\n## Attacks\n", f"English conflict items, {'1 step' if args.fast else ATTACK_STEPS + ' steps'} of "
                "APGD (the default optimiser), persistence window layers 5-15. A flip is a conflict answer that names "
                "the voice's emotion after the attack; text-dominant counts only the items whose clean answer "
                "followed the text. Intervals resample clips.\n", attack_section(attacks),
                "", comparison_section(comparisons),
                "\n## Leaderboard\n", board_section(board, board_text, args.fast)]
    if benches:
        sections += ["\n## Benchmarks\n", "Ratios measured in one run each, threads pinned.\n", bench_section(benches)]
    atomic_write_text(page, "\n".join(sections).rstrip() + "\n")
    print(f"wrote {page} and {board_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
