"""The attack on the organism, whose weights the `organism` fixture loads (it says how to build them if missing)."""
from __future__ import annotations

from attacks import directions as directions_module
from attacks import pgd
from probes.inputs import load_probe_set
from stimuli.conditions import seed_items


def test_pgd_steps_on_the_organism_push_a_furious_clip_further_toward_angry(organism):
    items = seed_items(["en"], ("audio_only", "conflict"))
    directions = directions_module.compute(organism, items)
    furious = [item for item in items if item.clip_id == "A7-en" and item.condition == "conflict"]
    # the persistence objective alone, window 5..15 and early exit; all four conflict prompts in every step
    config = pgd.PGDConfig(steps=5, checkpoint_every=0, prompts_per_clip=4, final_weight=0.0)
    history = []
    result = pgd.run(organism, furious, config, directions, callback=lambda step, parts: history.append(parts))
    assert config.stop_layer() == 15 < organism.n_layers
    assert history[-1]["loss"] < history[0]["loss"]
    clean = load_probe_set(organism, furious, pad=False).wave("A7-en")
    assert float(result.perturbation(furious[0], clean).abs().max()) <= config.epsilon  # as written to the WAV
