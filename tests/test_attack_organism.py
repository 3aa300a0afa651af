"""The attack on the organism, whose weights the `organism` fixture loads (it says how to build them if missing)."""
from __future__ import annotations

import dataclasses

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


def test_success_at_twice_the_budget_is_at_least_success_at_the_budget(organism):
    """A larger ball holds every point of the smaller one: started from the smaller budget's best δ (as a sweep
    does) and keeping its best iterate, the attack at 2ε answers the voice's emotion at least as often as at ε."""
    items = seed_items(["en"], ("audio_only", "conflict"))
    directions = directions_module.compute(organism, items)
    chosen = [item for item in items if item.clip_id == "A7-en" and item.condition == "conflict"]
    config = pgd.PGDConfig(steps=2, checkpoint_every=0, persistence_weight=0.0, lens_weight=0.0)
    small = pgd.run(organism, chosen, config, directions)
    large = pgd.run(organism, chosen, dataclasses.replace(config, epsilon=2 * config.epsilon), directions,
                    start=small.deltas)
    assert large.hits["A7-en"] >= small.hits["A7-en"]
    assert large.curve[0]["flip_rate"] == small.hits["A7-en"] / len(chosen)  # its first step scores that δ
