"""The attack on the other model families: tiny random Qwen2.5-Omni and Audio Flamingo 3 builds (no downloads)."""
from __future__ import annotations

import pytest
import torch

from attacks import directions as directions_module
from attacks import pgd
from attacks.persistence import read
from probes.inputs import load_probe_set
from stimuli.conditions import seed_items
from test_adapters import tiny_audio_flamingo3, tiny_qwen2_5_omni


@pytest.mark.parametrize("build", [tiny_qwen2_5_omni, tiny_audio_flamingo3], ids=["qwen2.5-omni", "audio-flamingo3"])
def test_one_attack_step_and_its_readout_run_on_the_family(build):
    adapter = build()
    items = [item for item in seed_items(["en"], ("audio_only", "conflict"))
             if item.clip_id in ("A6-en", "A9-en")]
    directions = directions_module.compute(adapter, items)
    chosen = [item for item in items if item.condition == "conflict" and item.clip_id == "A9-en"][:2]
    config = pgd.PGDConfig(from_layer=1, target_layer=2, steps=2, checkpoint_every=0, restarts=1)
    result = pgd.run(adapter, chosen, config, directions)
    assert len(result.curve) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    inputs = load_probe_set(adapter, chosen, pad=False)
    clean = inputs.wave("A9-en")
    adversarial = clean + result.perturbation(chosen[0], clean)
    assert float((adversarial - clean).abs().max()) <= config.epsilon
    targets = [directions.index(item.audio_emotion) for item in chosen]
    readout = read(adapter, inputs, chosen, [adversarial] * len(chosen), targets, directions)
    assert readout.lens.shape == (2, adapter.n_layers + 1, len(directions.emotions))
