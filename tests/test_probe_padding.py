"""Clips are padded to one fixed duration, so a clip's probe numbers do not depend on the other clips of a run."""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import ModalflipError
from conftest import sensitive_tiny_qwen2_audio
from probes import logit_lens
from probes.inputs import load_probe_set
from stimuli.conditions import seed_items


@pytest.fixture(scope="module")
def tiny():
    return sensitive_tiny_qwen2_audio()


def test_a_clips_lens_readings_are_the_same_alone_and_in_a_larger_set(tiny):
    """A short clip probed alone and probed beside the longest clips of both languages reads the same curves (padding
    to the set's longest clip gave different English curves under --lang en and --lang both)."""
    everything = seed_items(["en", "zh"], ("audio_only", "conflict", "consistent"))
    alone = load_probe_set(tiny, [i for i in everything if i.clip_id == "A1-en"])
    together = load_probe_set(tiny, everything)
    assert len(alone.waves["A1-en"]) == len(together.waves["A1-en"])
    per_alone, final_alone = logit_lens.label_logits(tiny, alone, alone.items, batch_size=8)
    per_together, final_together = logit_lens.label_logits(tiny, together, alone.items, batch_size=8)
    for item in alone.items:
        np.testing.assert_allclose(per_alone[item.item_id], per_together[item.item_id], atol=1e-5)
        np.testing.assert_allclose(final_alone[item.item_id], final_together[item.item_id], atol=1e-5)


def test_clips_are_padded_to_the_model_window_by_default(tiny):
    items = [i for i in seed_items(["en"], ("audio_only",)) if i.clip_id in ("A1-en", "A7-en")]
    probe_set = load_probe_set(tiny, items)
    assert probe_set.pad_seconds == tiny.window_seconds
    assert {len(w) for w in probe_set.waves.values()} == {int(tiny.window_seconds * tiny.sampling_rate)}
    shorter = load_probe_set(tiny, items, pad_seconds=5.5)
    assert {len(w) for w in shorter.waves.values()} == {int(5.5 * tiny.sampling_rate)}


def test_a_clip_longer_than_the_pad_length_is_refused_naming_the_option(tiny):
    items = seed_items(["en"], ("audio_only",))
    with pytest.raises(ModalflipError, match="--pad-to"):
        load_probe_set(tiny, items, pad_seconds=2.0)
    with pytest.raises(ModalflipError, match="--pad-to"):
        load_probe_set(tiny, items, pad_seconds=tiny.window_seconds + 1)


def test_unpadded_sets_keep_each_clips_own_length(tiny):
    items = [i for i in seed_items(["en"], ("audio_only",)) if i.clip_id in ("A1-en", "A7-en")]
    probe_set = load_probe_set(tiny, items, pad=False)
    assert probe_set.pad_seconds is None
    assert len({len(w) for w in probe_set.waves.values()}) == 2
