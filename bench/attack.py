"""`python -m bench.attack`: the time of one PGD step with and without early exit, and their ratio.

With the final-answer weight at 0 the attack's forward stops after --target-layer; this measures what that saves on
the organism (or, when its weights are missing, on a random model of the organism's shape: 32 decoder layers of
width 128, the same processor). One step = one batch of every selected clip under each of its conflict prompts,
forward and backward through the front end, the default `run_attack.py` step. The first step is a warm-up and not counted.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Sequence

import torch
from rich.console import Console
from rich.table import Table

from attacks import directions as direction_module
from attacks import pgd
from common.cli import run_main
from models.loading import ORGANISM_DIR, load_model
from stimuli.conditions import seed_items


def organism_or_stand_in():
    """(adapter, description): the organism if its weights exist, else a random model of its shape."""
    if (ORGANISM_DIR / "config.json").is_file():
        return load_model("organism", device="cpu"), "organism"
    from models.adapter import ModelAdapter
    from models.families.qwen2_audio import FAMILY
    from models.organism import build

    processor = build.build_processor()
    config = build.build_config(processor.tokenizer, n_layers=32, takeover_layer=16)
    model = build.build_model(config, seed=0).eval()
    return ModelAdapter(model, processor, FAMILY, "random-32-layer-qwen2-audio"), \
        "random 32-layer Qwen2-Audio of the organism's shape (organism weights missing)"


def step_seconds(adapter, items, config, directions, steps: int) -> list[float]:
    """Wall time of PGD steps 2..steps (seconds each)."""
    stamps = []
    pgd.run(adapter, items, dataclasses.replace(config, steps=steps, checkpoint_every=0), directions,
            callback=lambda step, parts: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (pinned)")
    parser.add_argument("--steps", type=int, default=3, help="PGD steps per mode; the first is a warm-up")
    parser.add_argument("--target-layer", type=int, default=pgd.PGDConfig.target_layer)
    parser.add_argument("--lang", default="both", choices=("en", "zh", "both"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    adapter, description = organism_or_stand_in()
    items = seed_items(["en", "zh"] if args.lang == "both" else [args.lang], ("audio_only", "conflict"))
    directions = direction_module.compute(adapter, items)
    conflict = [item for item in items if item.condition == "conflict"]
    config = pgd.PGDConfig(target_layer=adapter.check_layer(args.target_layer, "--target-layer"), final_weight=0.0)
    rows = len(conflict)  # every conflict prompt of every clip (prompts_per_clip None)
    timings = {}
    for name, early in (("early exit", True), ("full forward", False)):
        timings[name] = statistics.median(
            step_seconds(adapter, conflict, dataclasses.replace(config, early_exit=early), directions,
                         max(args.steps, 2)))
    table = Table(title=f"one PGD step: {description}")
    for column in ("forward", "layers run", "s per step", "rows per step"):
        table.add_column(column, justify="right")
    table.add_row("early exit", f"0..{config.target_layer}", f"{timings['early exit']:.3f}", str(rows))
    table.add_row("full forward", f"0..{adapter.n_layers}", f"{timings['full forward']:.3f}", str(rows))
    console.print(table)
    console.print(f"full / early exit = {timings['full forward'] / timings['early exit']:.2f}×  "
                  f"(torch threads: {torch.get_num_threads()}, median of {max(args.steps, 2) - 1} steps each)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
