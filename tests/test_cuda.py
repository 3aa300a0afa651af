"""The same work on a CUDA GPU, where real users run it: the organism's commands and its training step.

Skipped where torch sees no GPU (CI's CPU machine). Each test is one that failed, or would have failed, the first
time the project ran on a GPU: tensors built on the CPU met residuals on the GPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_qwen2_audio

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_emotion_directions_project_gpu_residuals_like_cpu_ones():
    from attacks.directions import Directions

    generator = torch.Generator().manual_seed(0)
    means = {pos: torch.randn(5, 4, 8, generator=generator) for pos in ("audio", "answer")}
    directions = Directions(["neutral", "happy", "sad", "angry", "fearful"], means, [3, 3, 3, 3, 0])
    resid, rows = torch.randn(6, 8, generator=generator), torch.tensor([0, 1, 2, 3, 1, 0])
    on_cpu = directions.project("audio", 2, resid, rows)
    on_gpu = directions.project("audio", 2, resid.cuda(), rows.cuda())
    assert on_gpu.device.type == "cuda" and torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-5)
    assert torch.equal(directions.probe("answer", 1, resid.cuda()).cpu(), directions.probe("answer", 1, resid))


def test_an_organism_training_step_runs_on_the_gpu_and_lowers_its_loss():
    from models.organism import train
    from stimuli import spec, tts

    adapter = tiny_qwen2_audio(n_layers=4)
    adapter.model.cuda()
    label_ids = {lang: adapter.label_token_ids(spec.label_words(lang)) for lang in spec.LANGS}
    clips = [train.Clip(tts.render("The lamp needs a new bulb.", lang, emotion, "normal"), lang, emotion, "normal",
                        "s", "v") for lang in ("en", "zh") for emotion in ("happy", "sad")]
    objective = train.Objective(takeover=2, settle=1, audio_lens_weight=0.5, invariance_weight=1.0)
    optimizer = torch.optim.AdamW(adapter.model.parameters(), lr=1e-3)
    adapter.model.train()
    losses = []
    for _ in range(3):
        loss = objective(adapter, clips, 8, np.random.default_rng(0), label_ids)  # the same batch each time
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    adapter.model.eval()
    assert losses[-1] < losses[0]
    rows = train.evaluation_set(clips, 0)
    assert train.evaluate(adapter, rows, label_ids)["n_items_per_condition"] == len(clips)


@pytest.mark.parametrize("command", ["probes", "attack", "prompt_search"])
def test_each_command_runs_on_the_organism_on_the_gpu(command, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    common = ["--device", "cuda", "--lang", "en", "--out", str(out), "--runs-dir", str(runs)]
    if command == "probes":
        from run_probes import main
        assert main([*common, "--n-boot", "50"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["patching"]["layers"]  # the Patch Text / Patch Audio sweep ran
    elif command == "attack":
        from run_attack import main
        assert main([*common, "--clips", "A7", "--steps", "2"]) == 0
        assert json.loads((out / "metrics.json").read_text())["flips"]["after"]["n"] == 4
    else:
        from run_prompt_search import main
        assert main([*common, "--trials", "3"]) == 0
        assert (out / "best_prompts.json").is_file()
