"""The attack's budget: projection onto the L∞ ball ∩ valid waveforms ∩ SNR floor, 16-bit rounding, perceptual size."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from attacks.budget import Budget, perceptual, project, snr_db, to_pcm16
from common.errors import ModalflipError


def _clip(n: int = 16000, seed: int = 0) -> torch.Tensor:
    """A speech-like test signal that touches full scale, so the [-1, 1] limit binds."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    wave = 0.6 * torch.sin(2 * torch.pi * 220 * t) * (1 + torch.sin(2 * torch.pi * 3 * t)) / 2
    wave = wave + 0.05 * torch.randn(n, generator=g)
    wave = torch.round(wave.clamp(-1, 1) * 32767) / 32768
    wave[100:200] = 1.0
    wave[300:400] = -1.0
    return wave


@pytest.mark.parametrize("budget", [Budget(0.01), Budget(0.01, snr_db=40.0), Budget(0.002, snr_db=20.0)])
def test_projection_keeps_linf_valid_range_and_snr(budget):
    clean = _clip()
    wild = torch.randn(clean.shape[0], generator=torch.Generator().manual_seed(1))  # far outside every budget
    delta = project(wild, clean, budget)
    assert delta.abs().max() <= budget.linf
    assert (clean + delta).abs().max() <= 1.0 + 1e-7
    assert delta[100:200].max() <= 1e-7 and delta[300:400].min() >= -1e-7  # no room above +1 or below -1
    if budget.snr_db is not None:
        assert snr_db(clean.numpy(), delta.numpy()) >= budget.snr_db


def test_projection_leaves_a_perturbation_inside_the_budget_unchanged():
    clean = _clip()
    small = 0.001 * torch.sin(torch.arange(clean.shape[0]) * 0.1)
    small[100:400] = 0
    assert torch.equal(project(small, clean, Budget(0.002)), small)


def test_pcm16_rounding_stays_on_the_grid_and_inside_the_budget():
    clean = _clip()
    budget = Budget(0.002, snr_db=45.0)
    delta = project(torch.randn(clean.shape[0]) * 0.01, clean, budget)
    written = to_pcm16(delta)
    adversarial = (clean + written) * 32768
    assert torch.equal(adversarial, torch.round(adversarial))  # exactly what a 16-bit WAV holds
    assert bool((written.abs() <= delta.abs()).all())
    assert snr_db(clean.numpy(), written.numpy()) >= 45.0


@pytest.mark.parametrize("epsilon", [0.0, -0.001, float("nan"), 1.5])
def test_nonpositive_or_huge_epsilon_is_a_user_error(epsilon):
    with pytest.raises(ModalflipError, match="epsilon"):
        Budget(epsilon)


def test_perceptual_size_of_a_small_perturbation():
    clean = _clip(32000).numpy().astype(np.float64)
    delta = 0.001 * np.sign(np.sin(np.arange(clean.shape[0]) * 0.37))
    size = perceptual(clean, clean + delta)
    expected = 10 * np.log10(np.sum(clean ** 2) / np.sum(delta ** 2))
    assert size.snr_db == pytest.approx(expected)
    assert size.linf == pytest.approx(0.001)
    assert size.l2 == pytest.approx(np.linalg.norm(delta))
    assert size.stoi > 0.9 and 1.0 <= size.pesq_wb <= 4.65


def test_pesq_and_stoi_refusals_on_a_short_clip_become_a_note():
    clean = _clip(1600).numpy()
    size = perceptual(clean, clean + 0.001)
    assert size.pesq_wb is None and "PESQ" in size.note
    assert size.snr_db is not None and size.linf == pytest.approx(0.001, rel=1e-4)


def test_without_the_pesq_package_the_other_measures_stand_and_the_note_says_why(monkeypatch):
    """pesq ships no wheels (on the lent GPU machine it did not build): the attack's report must not die there."""
    monkeypatch.setitem(sys.modules, "pesq", None)  # `from pesq import ...` now raises ImportError
    clean = _clip(32000).numpy().astype(np.float64)
    size = perceptual(clean, clean + 0.001)
    assert size.pesq_wb is None and "pesq package is not installed" in size.note
    assert size.stoi > 0.9 and size.linf == pytest.approx(0.001)
