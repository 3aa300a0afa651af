"""`python run_attack.py`: bad arguments are one line and exit 2 with nothing written; a run writes its outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import soundfile as sf

from conftest import ROOT, tiny_qwen2_audio


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "run_attack.py"), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("bad, message", [
    (["--target-layer", "9"], "--target-layer 9 is outside this model"),
    (["--epsilon", "0"], "epsilon"),
    (["--clips", "A99"], "no conflict items"),
    (["--from-layer", "1", "--target-layer", "3", "--persistence-weight", "0", "--lens-weight", "0",
      "--final-weight", "0"], "nothing to optimise"),
])
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(tiny_checkpoint, tmp_path, bad, message):
    out, runs = tmp_path / "out", tmp_path / "runs"
    done = _run("--model", str(tiny_checkpoint), "--device", "cpu", "--lang", "en", "--out", str(out),
                "--runs-dir", str(runs), "--steps", "1", *bad)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not out.exists()
    assert not (runs / "records").exists()


@pytest.mark.parametrize("bad, message", [
    (["--epsilon", "0.001,x"], "comma-separated list"),
    (["--epsilon", "0.001,2"], "epsilon 2.0 covers"),
    (["--restarts", "0"], "--restarts must be at least 1"),
    (["--step-size", "-1", "--optimizer", "pgd"], "--step-size must be a positive"),
    (["--stimuli", "missing.jsonl"], "does not exist"),
    (["--prompt-from", "nowhere.json"], "neither a template"),
    (["--transfer-from", "nowhere"], "holds no attack's metrics.json"),
])
def test_bad_attack_options_are_one_line_and_write_nothing(tiny_checkpoint, tmp_path, capsys, bad, message):
    """The same contract as above, run in this process (no model load is needed to refuse these)."""
    from common.cli import run_main
    from run_attack import main

    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--model", str(tiny_checkpoint), "--device", "cpu", "--lang", "en", "--out", str(out), "--runs-dir",
            str(runs), "--steps", "1", "--from-layer", "1", "--target-layer", "3", *bad]
    assert run_main(main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists() and not (runs / "records").exists()


def test_a_run_writes_clips_metrics_figure_and_one_record_and_a_rerun_resumes(tiny_checkpoint, tmp_path):
    from run_attack import main

    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--model", str(tiny_checkpoint), "--device", "cpu", "--lang", "en", "--clips", "A7", "--steps", "2",
            "--from-layer", "1", "--target-layer", "3", "--out", str(out), "--runs-dir", str(runs)]
    assert main(argv) == 0
    for name in ("adv/en/A7-en.wav", "clean/en/A7-en.wav", "metrics.json", "persistence.png", "checkpoint.pt",
                 "curve.json", "curve.png"):
        assert (out / name).is_file(), name
    adv, sr = sf.read(out / "adv/en/A7-en.wav", dtype="float32")
    clean, _ = sf.read(out / "clean/en/A7-en.wav", dtype="float32")
    assert sr == 16000 and adv.shape == clean.shape and abs(adv - clean).max() <= 0.002
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["budget"] == {"linf": 0.002, "snr_db": None}
    assert metrics["flips"]["after"]["n"] == 4 and len(metrics["items"]) == 4
    assert metrics["flips"]["after"]["unit"] == "clip" and metrics["flips"]["after"]["n_units"] == 1
    assert len(json.loads((out / "curve.json").read_text())["curve"]) == 2
    assert len(metrics["persistence"]["probe_accuracy_answer"]["clean"]) == 5  # residual layers 0..4
    records = list((runs / "records").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["budget"] == {"linf": 0.002}
    record = json.loads(records[0].read_text())
    assert record["lang"] == "en" and record["ci_unit"] == "clip"
    assert all(item["clip_id"] == "A7-en" and item["text_emotion"] for item in record["items"])

    assert main(argv) == 0  # same command, same --out: resumes at the end, re-measures, keeps the one record
    again = json.loads((out / "metrics.json").read_text())
    assert again["timing"]["resumed_from"] == 2
    assert again["items"] == metrics["items"]
    assert list((runs / "records").glob("*.json")) == records


def test_a_two_language_run_writes_one_record_per_language(tiny_checkpoint, tmp_path):
    """Attack records rank beside the per-language baselines and searches: one per language, its own items only."""
    from run_attack import main

    runs = tmp_path / "runs"
    argv = ["--model", str(tiny_checkpoint), "--device", "cpu", "--lang", "both", "--clips", "A7", "--steps", "1",
            "--from-layer", "1", "--target-layer", "3", "--out", str(tmp_path / "out"), "--runs-dir", str(runs)]
    assert main(argv) == 0
    records = [json.loads(path.read_text()) for path in (runs / "records").glob("*.json")]
    assert sorted(r["lang"] for r in records) == ["en", "zh"]
    for record in records:
        assert len(record["items"]) == 4
        assert all(f"-{record['lang']}/" in item["item_id"] for item in record["items"])


@pytest.mark.parametrize("change, name", [
    ({"final_weight": 0.0}, "pgd-persistence"),
    ({"final_weight": 1.0}, "pgd-persistence+answer"),
    ({"final_weight": 0.0, "universal": True}, "pgd-persistence-universal"),
    ({"final_weight": 0.5, "target_emotion": "sad"}, "pgd-persistence+answer-targeted"),
    ({"persistence_weight": 0.0, "lens_weight": 0.0}, "pgd-answer"),
    ({"persistence_weight": 0.0, "lens_weight": 0.5, "final_weight": 0.0}, "pgd-persistence"),
])
def test_the_two_objectives_rank_as_two_methods(change, name):
    from attacks.experiment import method_name
    from attacks.pgd import PGDConfig

    assert method_name(PGDConfig(**change)) == name


def _argv(tiny_checkpoint, tmp_path, *extra: str) -> list[str]:
    return ["--model", str(tiny_checkpoint), "--device", "cpu", "--lang", "en", "--steps", "1", "--from-layer", "1",
            "--target-layer", "3", "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"), *extra]


def test_an_epsilon_list_is_one_sweep_with_a_folder_a_record_and_a_point_per_budget(tiny_checkpoint, tmp_path):
    from run_attack import main

    assert main(_argv(tiny_checkpoint, tmp_path, "--clips", "A7", "--epsilon", "0.002,0.001")) == 0
    out = tmp_path / "out"
    sweep = json.loads((out / "sweep.json").read_text())
    assert [p["budget"]["linf"] for p in sweep["points"]] == [0.001, 0.002]  # smallest ball first
    assert sweep["unit"] == "clip" and (out / "sweep.png").is_file()
    for point in sweep["points"]:
        assert (out / point["folder"] / "metrics.json").is_file()
        assert point["text_dominant"]["unit"] == "clip" and point["snr_db_mean"] is not None
    budgets = sorted(json.loads(p.read_text())["budget"]["linf"] for p in (tmp_path / "runs/records").glob("*.json"))
    assert budgets == [0.001, 0.002]
    # the larger ball starts from the smaller one's best δ, so its first step scores it
    small = json.loads((out / "linf-0.001/curve.json").read_text())["curve"]
    large = json.loads((out / "linf-0.002/curve.json").read_text())["curve"]
    assert large[0]["loss"] == pytest.approx(small[0]["loss"], rel=1e-4)


def test_restarts_margin_loss_and_each_optimizer_run_from_the_command_line(tiny_checkpoint, tmp_path):
    from run_attack import main

    assert main(_argv(tiny_checkpoint, tmp_path, "--clips", "A7", "--restarts", "2", "--loss", "margin",
                      "--kappa", "1", "--optimizer", "adam", "--step-size", "0.0002")) == 0
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["settings"]["restarts"] == 2 and metrics["settings"]["loss"] == "margin"
    assert metrics["timing"]["steps"] == 2 and metrics["settings"]["optimizer"] == "adam"


def test_own_stimuli_are_attacked_from_a_manifest(tiny_checkpoint, tmp_path):
    """--stimuli reads a user's manifest as the probes and the search do: its clips, its hash in the record."""
    from run_attack import main
    from stimuli.spec import SEED_DIR

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [json.loads(line) for line in (SEED_DIR / "manifest.jsonl").read_text().splitlines()
            if json.loads(line)["id"] in ("A1-en", "A7-en")]
    for row in rows:
        (corpus / f"mine-{row['id']}.wav").write_bytes((SEED_DIR / row["path"]).read_bytes())
        row.update(id=f"mine-{row['id']}", path=f"mine-{row['id']}.wav")
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(_argv(tiny_checkpoint, tmp_path, "--stimuli", str(corpus / "manifest.jsonl"),
                      "--clips", "mine-A7-en")) == 0
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert {item["clip_id"] for item in metrics["items"]} == {"mine-A7-en"}
    assert metrics["stimuli"].endswith("manifest.jsonl")
    record = json.loads(next((tmp_path / "runs/records").glob("*.json")).read_text())
    assert record["stimulus_hash"] == metrics["stimulus_hash"] != json.loads(
        (ROOT / "stimuli/seed/manifest.jsonl").read_text().splitlines()[0]).get("hash")


def test_a_searched_prompt_or_a_template_is_what_the_attack_asks(tiny_checkpoint, tmp_path):
    from prompts.grammar import load_grammar
    from run_attack import main

    grammar = load_grammar()
    sample = dict(grammar.seed_prompt, cue="voice", **{"cue/voice": grammar.phrase_ids("cue", "voice")[0]},
                  emphasis="none")
    best = tmp_path / "best_prompts.json"
    best.write_text(json.dumps({"grammar_hash": grammar.hash, "best": [{"number": 7, "slots": sample}]}))
    assert main(_argv(tiny_checkpoint, tmp_path, "--clips", "A7", "--prompt-from", str(best))) == 0
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["method"].endswith("+searched-prompt") and metrics["prompt"]["searched"]["trial"] == 7
    record = json.loads(next((tmp_path / "runs/records").glob("*.json")).read_text())
    assert record["method"] == metrics["method"]

    other = tmp_path / "voice"
    other.mkdir()
    assert main(_argv(tiny_checkpoint, other, "--clips", "A7", "--prompt-from", "voice")) == 0
    assert json.loads((other / "out/metrics.json").read_text())["method"].endswith("+voice-prompt")


def test_out_of_memory_halves_the_rows_per_forward_and_the_run_finishes(tiny_checkpoint, tmp_path, monkeypatch):
    from attacks import pgd
    from run_attack import main

    real = pgd.objective

    def small_memory(adapter, batch, *args, **kwargs):
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(adapter, batch, *args, **kwargs)

    monkeypatch.setattr(pgd, "objective", small_memory)
    assert main(_argv(tiny_checkpoint, tmp_path, "--clips", "A7", "--batch-rows", "8")) == 0
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["timing"]["batch_rows"] == 2 and metrics["timing"]["steps"] == 1


def test_a_universal_delta_learns_its_directions_from_training_clips_only(tiny_checkpoint, tmp_path):
    from run_attack import main

    assert main(_argv(tiny_checkpoint, tmp_path, "--clips", "A6,A7,A8,A9", "--universal")) == 0
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    split = metrics["universal_split"]
    assert split["held_out"] and set(metrics["directions"]["clips"]) == set(split["train"])
    assert metrics["flips"]["unit"] == "clip (one universal δ)"
    assert metrics["flips"]["after"]["unit"] == "clip (one universal δ)"
    record = json.loads(next((tmp_path / "runs/records").glob("*.json")).read_text())
    assert record["ci_unit"] == "clip (one universal δ)"


def test_saved_perturbations_transfer_to_another_model_without_optimising(tiny_checkpoint, tmp_path):
    from run_attack import main

    other = tmp_path / "other-model"
    adapter = tiny_qwen2_audio(seed=1)
    adapter.model.save_pretrained(other)
    adapter.processor.save_pretrained(other)
    assert main(_argv(tiny_checkpoint, tmp_path / "source", "--clips", "A7", "--epsilon", "0.004")) == 0
    source = tmp_path / "source/out"
    target = tmp_path / "target"
    assert main(["--model", str(other), "--device", "cpu", "--lang", "en", "--clips", "A7", "--transfer-from",
                 str(source), "--out", str(target / "out"), "--runs-dir", str(target / "runs")]) == 0
    metrics = json.loads((target / "out/metrics.json").read_text())
    assert metrics["method"] == "pgd-persistence+answer-transfer" and metrics["timing"]["steps"] == 0
    assert metrics["transfer_from"]["run"] == str(source) and metrics["budget"]["linf"] == 0.004
    assert metrics["model"]["hash"] != json.loads((source / "metrics.json").read_text())["model"]["hash"]
    written, _ = sf.read(target / "out/adv/en/A7-en.wav", dtype="float32")
    original, _ = sf.read(source / "adv/en/A7-en.wav", dtype="float32")
    assert (written == original).all()  # the same adversarial clip, now measured on another model
    assert not (target / "out/checkpoint.pt").exists()
    assert len(list((target / "runs/records").glob("*.json"))) == 1
