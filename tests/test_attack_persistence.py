"""The persistence readout's summaries: the sign of Δlogit and no separation read on flat layers."""
from __future__ import annotations

import numpy as np

from attacks.persistence import Readout, delta_logit, summarize


def _readout(lens: np.ndarray, probe: np.ndarray) -> Readout:
    return Readout(answers=["happy"] * lens.shape[0], lens=lens, projection={p: np.zeros(probe.shape) for p in
                                                                             ("audio", "answer")},
                   probe={"audio": probe, "answer": probe})


def test_delta_logit_is_text_minus_voice():
    """Δlogit = logit(T) − logit(A): +2 where the text's label leads the voice's by 2 logits."""
    lens = np.zeros((1, 2, 3))
    lens[0, :, 2] = 3.0  # T = emotion 2
    lens[0, :, 0] = 1.0  # A = emotion 0
    assert np.allclose(delta_logit(_readout(lens, np.zeros((1, 2), int)), text=[2], voice=[0]), 2.0)


def test_a_flat_layer_reports_no_separation_instead_of_the_tie_break():
    """Layer 0 is flat (the probe reads −1 everywhere): its accuracy is None, not the share of items whose target
    happens to be the emotion a tie falls on, and it is never the deepest separating layer."""
    probe = np.array([[-1, 0, 1], [-1, 0, 1]])  # items × layers: flat, then two separating layers
    targets = [0, 0]
    clean = _readout(np.zeros((2, 3, 3)), probe)
    adversarial = _readout(np.zeros((2, 3, 3)), np.array([[-1, 0, 0], [-1, 0, 0]]))
    summary = summarize(clean, adversarial, targets, (0, 2))
    assert summary["probe_accuracy_answer"]["clean"] == [None, 1.0, 0.0]
    assert summary["deepest_separating_layer"] == {"clean": 1, "adversarial": 2}
    assert summary["survives_further"]
