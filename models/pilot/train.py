"""Train the pilot organism in one command: `python -m models.pilot.train [--out DIR] [--seed 0] [--threads 1]`.

Runs the two stages of `models/pilot/recipe.json` with `python -m models.organism.train`: stage 1 from the first
organism's weights into `--stage1` (default: a `pilot-stage1` folder beside OUT), then stage 2 from those weights
into OUT. Both stages checkpoint every 100 steps; after a kill the same command resumes the stage it was in, and a
finished stage 1 (its report written for the same seed and steps) is not run again. One seed, one device and one
thread count give the same weights on every run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.cli import run_main
from common.errors import ModalflipError
from models.organism import train

RECIPE = Path(__file__).parent / "recipe.json"
RUNNER_OPTIONS = ("--out", "--checkpoint", "--seed", "--threads", "--device")  # set by this command, not the recipe


def recipe(path: Path = RECIPE) -> dict[str, list[str]]:
    """The two stages' options for `models.organism.train` ('stage1', 'stage2'), each with its `--steps`."""
    try:
        data = json.loads(Path(path).read_text())
        stages = {"stage1": [str(o) for o in data["stage1"]], "stage2": [str(o) for o in data["stage2"]]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModalflipError(f"--recipe {path}: not a readable recipe with 'stage1' and 'stage2' option lists "
                             f"({err})") from None
    for name, options in stages.items():
        if "--steps" not in options[:-1] or any(o in options for o in RUNNER_OPTIONS):
            raise ModalflipError(f"--recipe {path}: {name} needs --steps and leaves {', '.join(RUNNER_OPTIONS)} "
                                 "to the runner")
    return stages


def stage_done(folder: Path, seed: int, options: list[str]) -> bool:
    """Whether `folder` holds weights a finished run of this stage wrote: its report has the seed and the steps."""
    report = folder / "training_report.json"
    if not report.is_file() or not any(folder.glob("*.safetensors")):
        return False
    written = json.loads(report.read_text())
    steps = int(options[options.index("--steps") + 1])
    return written.get("seed") == seed and written.get("steps") == steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.pilot.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(train.MODEL_DIRS["pilot"]), help="the model folder stage 2 writes")
    parser.add_argument("--stage1", default=None, help="the folder stage 1 writes (default: OUT/../pilot-stage1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the shipped weights: 1)")
    parser.add_argument("--device", default="auto",
                        help="'auto' (cuda if available), 'cpu' (the shipped weights), 'cuda', ...")
    parser.add_argument("--recipe", default=str(RECIPE), help="a JSON file with the two stages' options")
    args = parser.parse_args(argv)
    out = Path(args.out)
    first = Path(args.stage1) if args.stage1 else out.parent / "pilot-stage1"
    stages = recipe(Path(args.recipe))
    common = ["--seed", str(args.seed), "--threads", str(args.threads), "--device", args.device]
    if not stage_done(first, args.seed, stages["stage1"]):
        train.main(stages["stage1"] + common + ["--out", str(first), "--checkpoint", f"{first}.pt"])
    return train.main(stages["stage2"] + common + ["--init-from", str(first), "--out", str(out),
                                                   "--checkpoint", f"{out.parent / 'pilot-stage2'}.pt"])


if __name__ == "__main__":
    sys.exit(run_main(main))
