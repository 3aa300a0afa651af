"""`python run_attack.py`: bad arguments are one line and exit 2 with nothing written; a run writes its outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import soundfile as sf

from conftest import ROOT, tiny_qwen2_audio


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-qwen2-audio")
    adapter = tiny_qwen2_audio()
    adapter.model.save_pretrained(folder)
    adapter.processor.save_pretrained(folder)
    return folder


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


def test_a_run_writes_clips_metrics_figure_and_one_record_and_a_rerun_resumes(tiny_checkpoint, tmp_path):
    from run_attack import main

    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--model", str(tiny_checkpoint), "--device", "cpu", "--lang", "en", "--clips", "A7", "--steps", "2",
            "--from-layer", "1", "--target-layer", "3", "--out", str(out), "--runs-dir", str(runs)]
    assert main(argv) == 0
    for name in ("adv/en/A7-en.wav", "clean/en/A7-en.wav", "metrics.json", "persistence.png", "checkpoint.pt"):
        assert (out / name).is_file(), name
    adv, sr = sf.read(out / "adv/en/A7-en.wav", dtype="float32")
    clean, _ = sf.read(out / "clean/en/A7-en.wav", dtype="float32")
    assert sr == 16000 and adv.shape == clean.shape and abs(adv - clean).max() <= 0.002
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["budget"] == {"linf": 0.002, "snr_db": None}
    assert metrics["flips"]["after"]["n"] == 4 and len(metrics["items"]) == 4
    assert len(metrics["persistence"]["probe_accuracy_answer"]["clean"]) == 5  # residual layers 0..4
    records = list((runs / "records").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["budget"] == {"linf": 0.002}
    assert json.loads(records[0].read_text())["lang"] == "en"

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
