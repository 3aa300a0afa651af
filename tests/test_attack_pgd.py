"""PGD on the waveform (tiny random Qwen2-Audio): the gradient path, early exit, resume, and what the steps do."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from attacks import directions as directions_module
from attacks import pgd
from attacks.budget import snr_db
from common.errors import ModalflipError
from probes.inputs import load_probe_set
from stimuli.conditions import seed_items


@pytest.fixture(scope="module")
def items():
    return seed_items(["en"], ("audio_only", "conflict"))


@pytest.fixture(scope="module")
def directions(tiny_adapter, items):
    return directions_module.compute(tiny_adapter, items)


def _conflict(items, *clips):
    return [item for item in items if item.condition == "conflict" and item.clip_id in clips]


def _batch(adapter, items, delta=None):
    """A batch of `items` (all of one clip) with `delta` added to the clip, and the label ids."""
    inputs = load_probe_set(adapter, items, pad=False)
    clean = inputs.wave(items[0].clip_id)
    waves = [clean + delta if delta is not None else clean for _ in items]
    return adapter.build_batch(waves, [inputs.prompt(item) for item in items]), pgd.label_table(inputs, items)


def _targets(items, directions):
    return torch.tensor([directions.index(item.audio_emotion) for item in items])


SMALL = pgd.PGDConfig(from_layer=1, target_layer=2, steps=4, checkpoint_every=1, prompts_per_clip=2,
                      final_weight=0.0)


def test_gradient_reaches_the_waveform_through_the_front_end(tiny_adapter, items, directions):
    chosen = _conflict(items, "A7-en")[:2]
    length = load_probe_set(tiny_adapter, chosen, pad=False).waves["A7-en"].shape[0]
    delta = torch.zeros(length, requires_grad=True)
    batch, labels = _batch(tiny_adapter, chosen, delta)
    config = dataclasses.replace(SMALL, final_weight=1.0)
    loss, _ = pgd.objective(tiny_adapter, batch, _targets(chosen, directions), labels, directions, config)
    loss.backward()
    assert delta.grad is not None
    assert bool(torch.isfinite(delta.grad).all())
    assert float(delta.grad.abs().max()) > 0


def test_early_exit_gives_the_same_loss_as_the_full_forward(tiny_adapter, items, directions):
    chosen = _conflict(items, "A3-en")
    batch, labels = _batch(tiny_adapter, chosen)
    args = (tiny_adapter, batch, _targets(chosen, directions), labels, directions)
    with torch.no_grad():
        early, _ = pgd.objective(*args, dataclasses.replace(SMALL, early_exit=True))
        full, _ = pgd.objective(*args, dataclasses.replace(SMALL, early_exit=False))
    assert SMALL.stop_layer() == SMALL.target_layer
    assert torch.allclose(early, full, atol=1e-6)


class Killed(Exception):
    pass


@pytest.mark.parametrize("universal, eot", [(False, 0), (True, 2)])
def test_resume_after_a_kill_ends_with_the_uninterrupted_delta(tiny_adapter, items, directions, tmp_path, universal,
                                                              eot):
    chosen = _conflict(items, "A6-en", "A7-en")
    config = dataclasses.replace(SMALL, universal=universal, eot=eot, batch_rows=3)  # rows span several chunks
    whole = pgd.run(tiny_adapter, chosen, config, directions, checkpoint=tmp_path / "whole.pt")

    def kill_after_two(step, parts):
        if step == 1:
            raise Killed

    with pytest.raises(Killed):
        pgd.run(tiny_adapter, chosen, config, directions, checkpoint=tmp_path / "killed.pt", callback=kill_after_two)
    resumed = pgd.run(tiny_adapter, chosen, config, directions, checkpoint=tmp_path / "killed.pt")
    assert resumed.resumed_from == 2 and resumed.steps == whole.steps == 4
    assert resumed.losses == whole.losses
    assert whole.deltas.keys() == resumed.deltas.keys()
    for key in whole.deltas:
        assert torch.equal(whole.deltas[key], resumed.deltas[key])


def test_a_checkpoint_of_another_attack_is_refused(tiny_adapter, items, directions, tmp_path):
    chosen = _conflict(items, "A7-en")
    pgd.run(tiny_adapter, chosen, dataclasses.replace(SMALL, steps=1), directions, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ModalflipError, match="different attack"):
        pgd.run(tiny_adapter, chosen, dataclasses.replace(SMALL, steps=1, epsilon=0.004), directions,
                checkpoint=tmp_path / "c.pt")


def test_pgd_raises_the_projection_on_the_voice_emotion_inside_the_budget(tiny_adapter, items, directions):
    chosen = _conflict(items, "A5-en")
    config = dataclasses.replace(SMALL, steps=6, snr_db=35.0, checkpoint_every=0, prompts_per_clip=4)
    history = []
    result = pgd.run(tiny_adapter, chosen, config, directions, callback=lambda step, parts: history.append(parts))
    assert history[-1]["persistence"] > history[0]["persistence"]
    clean = load_probe_set(tiny_adapter, chosen, pad=False).wave("A5-en")
    written = result.perturbation(chosen[0], clean)
    assert written.abs().max() <= config.epsilon
    assert snr_db(clean.numpy(), written.numpy()) >= 35.0
    assert result.queries == 6 * 4  # one clip, its four conflict prompts in every step


def test_a_universal_delta_is_one_per_voice_emotion_and_spans_the_window(tiny_adapter, items, directions):
    chosen = _conflict(items, "A6-en", "A7-en", "A9-en")
    result = pgd.run(tiny_adapter, chosen, dataclasses.replace(SMALL, steps=1, universal=True), directions)
    assert sorted(result.deltas) == ["angry", "fearful"]
    assert all(d.shape[0] == tiny_adapter.extractor.n_samples for d in result.deltas.values())


@pytest.mark.parametrize("change, message", [
    (dict(target_layer=99), "outside this model"),
    (dict(from_layer=3, target_layer=2), "above --target-layer"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(target_emotion="bored"), "unknown emotion"),
])
def test_bad_settings_are_user_errors(tiny_adapter, items, directions, change, message):
    with pytest.raises(ModalflipError, match=message):
        pgd.run(tiny_adapter, _conflict(items, "A7-en"), dataclasses.replace(SMALL, **change), directions)


def test_an_empty_item_set_is_a_user_error(tiny_adapter, directions):
    with pytest.raises(ModalflipError, match="no items"):
        pgd.run(tiny_adapter, [], SMALL, directions)
