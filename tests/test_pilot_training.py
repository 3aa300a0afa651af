"""`python -m models.pilot.train`: the pilot organism's two stages in one resumable command."""
from __future__ import annotations

import json

import pytest

from common.cli import run_main
from models.organism import train as organism_train
from models.pilot import card, train

TINY = ["--plant", "pilot", "--layers", "6", "--takeover-layer", "2", "--train-sentences", "1", "--renders", "1",
        "--batch-size", "4"]


def test_the_recipe_is_the_two_commands_the_shipped_report_records():
    """The one command trains what the card's two stage commands say (the stage-2 weights start from stage 1's)."""
    report = json.loads((card.MODEL_DIR / "training_report.json").read_text())
    first, _ = card.stages(report)
    stages = train.recipe()
    assert card.command(first) == "python -m models.organism.train " + " ".join(stages["stage1"])
    stage2 = card.command(report).replace(f"--init-from {report['init_from']} ", "")
    assert stage2 == "python -m models.organism.train " + " ".join(stages["stage2"])


def test_one_command_runs_stage_one_then_stage_two_from_its_weights_and_skips_a_finished_stage_one(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stage1": TINY + ["--lr", "0.001", "--steps", "2"],
                                  "stage2": TINY + ["--lr", "0.0005", "--steps", "1"]}))
    args = ["--out", str(tmp_path / "model"), "--recipe", str(recipe), "--device", "cpu"]
    assert run_main(train.main, args) == 0
    first = tmp_path / "pilot-stage1"
    report = json.loads((tmp_path / "model" / "training_report.json").read_text())
    assert report["init_from"] == str(first) and report["steps"] == 1 and report["lr"] == 0.0005
    assert report["base"]["steps"] == 2 and report["base"]["seed"] == report["seed"] == 0
    # the report describes the saved fp16 weights on the same items a later evaluation scores, though stage 2's
    # voice-wins rule marked some held-out clips while it trained
    assert organism_train.reevaluate(tmp_path / "model")["heldout"] == report["heldout"]
    weights = (first / "model.safetensors").stat().st_mtime_ns
    # run again with a stage 2 that is refused as soon as it starts: stage 1 is done, so it is not run again
    recipe.write_text(json.dumps({"stage1": TINY + ["--lr", "0.001", "--steps", "2"],
                                  "stage2": TINY + ["--lr", "0.0005", "--steps", "1", "--train-sentences", "0"]}))
    assert run_main(train.main, args) == 2
    assert (first / "model.safetensors").stat().st_mtime_ns == weights
    assert train.stage_done(first, 0, ["--steps", "2"])
    assert not train.stage_done(first, 1, ["--steps", "2"]) and not train.stage_done(first, 0, ["--steps", "3"])


@pytest.mark.parametrize("content", ['{"stage1": ["--steps", "1"]}', '{"stage1": ["--steps", "1", "--seed", "3"], '
                                     '"stage2": ["--steps", "1"]}', "not json"])
def test_a_recipe_without_both_stages_or_setting_the_runner_options_is_refused(tmp_path, capsys, content):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(content)
    assert run_main(train.main, ["--out", str(tmp_path / "model"), "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --recipe") and len(err.splitlines()) == 1
    assert not (tmp_path / "model").exists()
