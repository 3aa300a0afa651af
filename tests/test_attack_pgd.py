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
    evaluation = pgd.objective(tiny_adapter, batch, _targets(chosen, directions), labels, directions, config)
    evaluation.loss.mean().backward()
    assert delta.grad is not None
    assert bool(torch.isfinite(delta.grad).all())
    assert float(delta.grad.abs().max()) > 0


def test_early_exit_gives_the_same_loss_as_the_full_forward(tiny_adapter, items, directions):
    chosen = _conflict(items, "A3-en")
    batch, labels = _batch(tiny_adapter, chosen)
    args = (tiny_adapter, batch, _targets(chosen, directions), labels, directions)
    with torch.no_grad():
        early = pgd.objective(*args, dataclasses.replace(SMALL, early_exit=True)).loss
        full = pgd.objective(*args, dataclasses.replace(SMALL, early_exit=False)).loss
    assert SMALL.stop_layer() == SMALL.target_layer
    assert torch.allclose(early, full, atol=1e-6)


class Killed(Exception):
    pass


@pytest.mark.parametrize("universal, eot, optimizer, restarts", [
    (False, 0, "apgd", 2), (True, 2, "apgd", 1), (False, 0, "adam", 2), (False, 0, "pgd", 1)])
def test_resume_after_a_kill_ends_with_the_uninterrupted_delta(tiny_adapter, items, directions, tmp_path, universal,
                                                              eot, optimizer, restarts):
    """Killed after step 2 (inside the first restart), the rerun resumes the optimiser state, best iterates,
    RNG and curves: the same losses and the same δ as a run that was never stopped."""
    chosen = _conflict(items, "A6-en", "A7-en")
    config = dataclasses.replace(SMALL, universal=universal, eot=eot, batch_rows=3, optimizer=optimizer,
                                 restarts=restarts, steps=4 if restarts == 1 else 3)  # rows span several chunks
    whole = pgd.run(tiny_adapter, chosen, config, directions, checkpoint=tmp_path / "whole.pt")

    def kill_after_two(step, parts):
        if step == 1:
            raise Killed

    with pytest.raises(Killed):
        pgd.run(tiny_adapter, chosen, config, directions, checkpoint=tmp_path / "killed.pt", callback=kill_after_two)
    resumed = pgd.run(tiny_adapter, chosen, config, directions, checkpoint=tmp_path / "killed.pt")
    assert resumed.resumed_from == 2 and resumed.steps == whole.steps == config.steps * restarts
    assert resumed.losses == whole.losses and resumed.curve == whole.curve
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
    assert result.queries == 6 * 4  # one clip, its four conflict prompts in every step (the default: all)


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


def test_apgd_checkpoints_follow_croce_and_hein():
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06): 22, 41, 57, 70, 80, 87, 93 of 100."""
    assert pgd.apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_the_margin_loss_stops_at_kappa_and_cross_entropy_does_not():
    logits = torch.tensor([[3.0, 0.0, 1.0], [0.0, 2.0, 0.5]])
    targets = torch.tensor([0, 0])
    margin = pgd.answer_loss(logits, targets, pgd.PGDConfig(loss="margin", kappa=1.5))
    assert torch.allclose(margin, torch.tensor([-1.5, 2.0]))  # a 2-logit lead counts as κ = 1.5
    ce = pgd.answer_loss(logits, targets, pgd.PGDConfig(loss="ce"))
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(logits, targets, reduction="none"))


@pytest.mark.parametrize("optimizer", ["apgd", "pgd", "adam"])
def test_every_optimizer_stays_inside_the_budget_and_keeps_the_best_iterate(tiny_adapter, items, directions,
                                                                            optimizer):
    chosen = _conflict(items, "A5-en")
    config = dataclasses.replace(SMALL, optimizer=optimizer, steps=3, restarts=2, snr_db=30.0, final_weight=1.0,
                                 loss="margin", checkpoint_every=0, step_size=0.01)  # a step far beyond ε
    result = pgd.run(tiny_adapter, chosen, config, directions)
    clean = load_probe_set(tiny_adapter, chosen, pad=False).wave("A5-en")
    kept = result.deltas["A5-en"]
    assert kept.abs().max() <= config.epsilon and (clean + kept).abs().max() <= 1.0
    assert snr_db(clean.numpy(), kept.numpy()) >= 30.0 - 1e-3  # float32 norms; the written δ below is exact
    written = result.perturbation(chosen[0], clean)
    assert written.abs().max() <= config.epsilon and snr_db(clean.numpy(), written.numpy()) >= 30.0
    assert len(result.curve) == 6 and [c["restart"] for c in result.curve] == [0, 0, 0, 1, 1, 1]
    # the kept δ is the best scored iterate: as many hits as the best step, and that step's loss
    best = max(result.curve, key=lambda c: (c["flip_rate"], -c["loss"]))
    assert result.hits["A5-en"] == round(best["flip_rate"] * 4)


def test_a_start_inside_the_ball_is_scored_first_so_a_larger_budget_never_ends_worse(tiny_adapter, items,
                                                                                     directions):
    chosen = _conflict(items, "A6-en")
    small = dataclasses.replace(SMALL, steps=2, final_weight=1.0, checkpoint_every=0, prompts_per_clip=None)
    inner = pgd.run(tiny_adapter, chosen, small, directions)
    outer = pgd.run(tiny_adapter, chosen, dataclasses.replace(small, epsilon=0.004), directions, start=inner.deltas)
    assert outer.curve[0]["loss"] == pytest.approx(min(c["loss"] for c in inner.curve
                                                       if c["flip_rate"] == inner.hits["A6-en"] / 4), rel=1e-5)
    assert outer.hits["A6-en"] >= inner.hits["A6-en"]
