"""Intervals resample the clip, the independent unit; paired comparisons are paired at the clip too."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.backoff import with_oom_backoff
from common.errors import ModalflipError
from common.stats import clustered_rate, difference_of_means, paired_cluster_test, wilson_interval


def _three_clips_flip() -> tuple[list[int], list[str]]:
    """18 clips x 4 items; 8 flips, all in the first three clips (the shape of a small attack's result)."""
    flags = [0] * 72
    for i in (0, 1, 2, 4, 5, 6, 8, 9):
        flags[i] = 1
    return flags, [f"clip{i // 4}" for i in range(72)]


def test_clustered_interval_is_wider_than_the_item_level_one():
    flags, clips = _three_clips_flip()
    clustered = clustered_rate(flags, clips)
    low, high = wilson_interval(8, 72)
    assert clustered.k == 8 and clustered.n == 72 and clustered.n_units == 18 and clustered.unit == "clip"
    assert clustered.method == "cluster bootstrap"
    assert clustered.low <= 0.01 < low  # three flipping clips out of 18 may be none in a resample
    assert clustered.high > high


def test_items_of_independent_clips_give_about_the_wilson_interval():
    rng = np.random.default_rng(1)
    flags = rng.random(400) < 0.3
    clustered = clustered_rate(flags, range(400))
    low, high = wilson_interval(int(flags.sum()), 400)
    assert abs(clustered.low - low) < 0.02 and abs(clustered.high - high) < 0.02


def test_a_rate_equal_in_every_clip_gets_the_wilson_interval_over_clips():
    nothing = clustered_rate([0] * 72, [f"c{i // 4}" for i in range(72)])
    assert nothing.method == "Wilson over units"
    assert (nothing.low, nothing.high) == pytest.approx(wilson_interval(0, 18))
    assert nothing.high > 0.1  # 18 clips cannot rule out a 10 % rate


def test_a_fractional_rate_equal_in_every_clip_gets_an_interval_around_it():
    quarter = clustered_rate([i % 4 == 0 for i in range(36)], [f"c{i // 4}" for i in range(36)])
    assert quarter.rate == 0.25 and quarter.method == "Wilson over units"
    assert quarter.low < 0.25 < quarter.high
    assert (quarter.low, quarter.high) == pytest.approx(wilson_interval(2.25, 9))


def test_paired_test_counts_clips_not_items():
    flags, clips = _three_clips_flip()
    result = paired_cluster_test(flags, [0] * 72, clips)
    assert (result.items_a_not_b, result.items_b_not_a) == (8, 0)
    assert result.units_a_more == 3 and result.units_b_more == 0
    assert result.p_value == pytest.approx(0.25)  # 3 discordant clips, all one way: 2 / 2^3
    assert result.low <= 0.0 < result.difference <= result.high


def test_paired_test_of_a_method_with_itself_finds_nothing():
    flags, clips = _three_clips_flip()
    result = paired_cluster_test(flags, flags, clips)
    assert result.difference == 0 and result.p_value == 1.0 and result.low == result.high == 0.0



def test_a_gap_between_groups_of_independent_clips_gets_the_normal_theory_interval():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 2.0, 200)
    gap, low, high = difference_of_means(a, range(300), b, range(300, 500))
    half = 1.96 * np.sqrt(a.var() / 300 + b.var() / 200)
    assert gap == pytest.approx(a.mean() - b.mean())
    assert low == pytest.approx(gap - half, abs=0.05) and high == pytest.approx(gap + half, abs=0.05)


def test_a_gap_carried_by_one_clip_is_not_measurable():
    """Four items per clip: one clip of the first group far above the rest makes a gap no interval over clips
    can tell from zero, though its 4 items would look like a shift to an item-level interval."""
    a = [0.0] * 36 + [5.0] * 4
    gap, low, high = difference_of_means(a, [f"a{i // 4}" for i in range(40)], [0.0] * 40,
                                         [f"b{i // 4}" for i in range(40)])
    assert gap == pytest.approx(0.5) and low == 0.0 < gap < high
    with pytest.raises(ValueError):
        difference_of_means([], [], [1.0], ["b"])

def test_out_of_memory_halves_the_batch_until_it_fits():
    tried, said = [], []

    def job(size: int) -> str:
        tried.append(size)
        if size > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return f"ran {size}"

    result, size = with_oom_backoff(job, 16, "pairs per forward", said.append)
    assert (result, size, tried) == ("ran 2", 2, [16, 8, 4, 2])
    assert len(said) == 3 and "retrying with 2" in said[-1]


def test_out_of_memory_at_batch_one_is_a_user_error_and_other_errors_pass_through():
    def oom(size: int):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(ModalflipError, match="out of memory"):
        with_oom_backoff(oom, 4, "rows per step", lambda _: None)

    def bug(size: int):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        with_oom_backoff(bug, 4, "rows per step", lambda _: None)
