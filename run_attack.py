"""`python run_attack.py --target-layer 15`: adversarial audio whose emotion survives the middle layers.

PGD on the waveform inside an L∞ (and optional SNR) budget, pushing the residual stream of the audio span and the
answer position toward the voice's emotion over layers --from-layer..--target-layer (or the window that
--window-from reads off the model's probes, attacks/window.py); see attacks/pgd.py for the objective and optimisers
and attacks/experiment.py for the output folder. Several budgets (--epsilon 0.001,0.002,0.004) run as one sweep.
Rerun the same command with the same --out to resume.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import transformers

from attacks.experiment import TEMPLATES, run_attack
from attacks.pgd import LOSSES, OPTIMIZERS, SCHEDULES, PGDConfig
from common.cli import run_main, runner_parser
from eval.records import make_record, write_record

DEFAULTS = PGDConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = runner_parser("run_attack.py", __doc__.splitlines()[0].split(": ", 1)[1])
    attack = parser.add_argument_group("attack options")
    attack.add_argument("--target-layer", type=int, default=None,
                        help=f"last residual layer of the persistence window (0 = embeddings; None: "
                             f"{DEFAULTS.target_layer})")
    attack.add_argument("--from-layer", type=int, default=None,
                        help=f"first residual layer of the persistence window (None: {DEFAULTS.from_layer})")
    attack.add_argument("--window-from", default=None, metavar="PROBES",
                        help="set the window from the probes of the attacked model (a run_probes.py folder or its "
                             "summary.json): from the first layer where its audio-only logit lens reads the voice "
                             "(95%% interval below 0) to the conflict critical layer; with --lang both, the layers "
                             "where that holds in every language")
    attack.add_argument("--epsilon", default=str(DEFAULTS.epsilon),
                        help="L∞ budget on the waveform perturbation, full scale 1.0; a comma-separated list "
                             "(0.001,0.002,0.004) runs a sweep, one folder and record per budget")
    attack.add_argument("--snr-db", default=DEFAULTS.snr_db,
                        help="also keep the SNR of the adversarial clip at least this many dB (a list sweeps)")
    attack.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer,
                        help="apgd: sign steps with APGD's step-size rule (starts at 2ε, halves when progress "
                             "stalls, nothing to tune); pgd: sign steps of --step-size; adam: Adam, rate --step-size")
    attack.add_argument("--steps", type=int, default=DEFAULTS.steps, help="forward-backward steps per restart")
    attack.add_argument("--step-size", type=float, default=DEFAULTS.step_size,
                        help="pgd's sign step / adam's learning rate, full scale 1 (not a share of ε); "
                             "apgd ignores it")
    attack.add_argument("--schedule", choices=SCHEDULES, default=DEFAULTS.schedule,
                        help="pgd and adam: cosine decay of the step to a tenth, or constant")
    attack.add_argument("--restarts", type=int, default=DEFAULTS.restarts,
                        help="runs from random starts in the ball; each clip keeps its best δ over all")
    attack.add_argument("--loss", choices=LOSSES, default=DEFAULTS.loss,
                        help="the final answer's loss: cross-entropy, or the C&W margin "
                             "max(max_other − target, −κ)")
    attack.add_argument("--kappa", type=float, default=DEFAULTS.kappa,
                        help="margin loss: the target's lead (logits) beyond which it stops pushing")
    attack.add_argument("--eot", type=int, default=DEFAULTS.eot,
                        help="random channels (gain, delay, noise) per prompt and step; 0 = none")
    attack.add_argument("--universal", action="store_true",
                        help="one perturbation per voice emotion, evaluated on held-out clips")
    attack.add_argument("--target-emotion", default=DEFAULTS.target_emotion,
                        help="push answers to this emotion instead of the voice's own")
    attack.add_argument("--final-weight", type=float, default=DEFAULTS.final_weight,
                        help="weight of the final answer's loss (--loss; 0 = stop the forward at --target-layer)")
    attack.add_argument("--persistence-weight", type=float, default=DEFAULTS.persistence_weight,
                        help="weight of the projection on the target emotion's direction")
    attack.add_argument("--lens-weight", type=float, default=DEFAULTS.lens_weight,
                        help="weight of the logit-lens margin toward the target emotion")
    attack.add_argument("--prompts-per-clip", type=int, default=DEFAULTS.prompts_per_clip,
                        help="conflict prompts of each clip in one step's batch, taken in turn (None: all)")
    attack.add_argument("--batch-rows", type=int, default=DEFAULTS.batch_rows,
                        help="prompt-clip rows per forward pass; halved automatically on out-of-memory errors")
    attack.add_argument("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every,
                        help="save the attack's state every N steps (0 = never)")
    attack.add_argument("--clips", default=None,
                        help="comma-separated clips to attack, e.g. A7,A9 or A7-en (None: all)")
    attack.add_argument("--stimuli", default=None,
                        help="a manifest (JSONL/CSV) of your own clips; default: the committed seed set")
    attack.add_argument("--prompt-from", default=None,
                        help=f"ask the conflict items with a prompt search's best_prompts.json (its best prompt) or "
                             f"a stimulus template ({', '.join(TEMPLATES)}); default: the stimulus set's own")
    attack.add_argument("--transfer-from", default=None,
                        help="evaluate the adversarial clips of this attack folder (one budget's, from any model) on "
                             "--model without optimising; the attack options come from that run")
    return parser


def leaderboard(runs_dir: str):
    """The record writer handed to the attack (attacks sit below eval, so the runner joins them)."""
    return lambda **fields: str(write_record(make_record(**fields), runs_dir))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    transformers.logging.disable_progress_bar()  # stderr keeps to errors: one line each
    return run_attack(args, leaderboard(args.runs_dir))


if __name__ == "__main__":
    sys.exit(run_main(main))
