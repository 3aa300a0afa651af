"""The statistics every layer reports, all of them clustered on the independent unit (the clip).

Items of one clip share its audio (and, in an attack, its δ), so they are not independent draws: every interval
here resamples whole clusters, never items. Rates and means get a percentile cluster bootstrap
(`clustered_rate`, `cluster_bootstrap_mean`); a difference between two groups of different clips
(`difference_of_means`) draws each group's clips separately; two methods run on the same items are compared with a
paired cluster bootstrap of the difference and an exact sign-flip test over clusters (`paired_cluster_test`).
`wilson_interval` remains for the one place where the bootstrap has nothing to resample (see `clustered_rate`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

N_BOOT = 2000
UNIT_CLIP = "clip"
EXACT_SIGN_FLIP_LIMIT = 16  # clusters up to which the sign-flip test enumerates all 2^n sign patterns


def wilson_interval(successes: float, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a binomial rate; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _cluster_sums(values: np.ndarray, clusters: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums of `values` (n_items, ...) and item counts, clusters in sorted order of their labels."""
    labels = np.asarray([str(c) for c in clusters])
    if len(labels) != len(values):
        raise ValueError(f"{len(values)} values but {len(labels)} cluster labels")
    unique, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(unique),) + values.shape[1:], dtype=np.float64)
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=len(unique)).astype(np.float64)
    return sums, counts


def _bootstrap_ratio(sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int, level: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of sum(values) / sum(counts) over clusters drawn with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(counts), size=(n_boot, len(counts)))
    boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1).reshape((n_boot,) + (1,) * (sums.ndim - 1))
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    return low, high


def cluster_bootstrap_mean(
    values: np.ndarray, clusters: Sequence, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over items and its percentile interval, resampling whole clusters (clips), not items.

    `values` is (n_items, ...) ; returns (mean, low, high), each of shape values.shape[1:].
    Items that share a clip are not independent, so the bootstrap draws clips with replacement and keeps
    all items of each drawn clip.
    """
    values = np.asarray(values, dtype=np.float64)
    sums, counts = _cluster_sums(values, clusters)
    low, high = _bootstrap_ratio(sums, counts, n_boot, seed, level)
    return values.mean(axis=0), low, high


def difference_of_means(a: Sequence[float], a_clusters: Sequence, b: Sequence[float], b_clusters: Sequence,
                        n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) − mean(b) for two groups of different clips, with a percentile interval that draws each group's
    clusters (clips) with replacement, separately: a stratified cluster bootstrap, for groups that share no unit
    (normal against strong renders). Returns (difference, low, high) in the values' units."""
    values_a, values_b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(values_a) == 0 or len(values_b) == 0:
        raise ValueError("difference_of_means needs items in both groups")
    sums_a, counts_a = _cluster_sums(values_a, a_clusters)
    sums_b, counts_b = _cluster_sums(values_b, b_clusters)
    rng = np.random.default_rng(seed)
    draws_a = rng.integers(0, len(counts_a), size=(n_boot, len(counts_a)))
    draws_b = rng.integers(0, len(counts_b), size=(n_boot, len(counts_b)))
    boot = (sums_a[draws_a].sum(axis=1) / counts_a[draws_a].sum(axis=1)
            - sums_b[draws_b].sum(axis=1) / counts_b[draws_b].sum(axis=1))
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return float(values_a.mean() - values_b.mean()), float(low), float(high)


@dataclass(frozen=True)
class RateInterval:
    """A rate k / n over items with a 95% interval that resamples `unit`s (`n_units` of them), not items."""

    k: int
    n: int
    rate: float | None  # None when n = 0
    low: float
    high: float
    unit: str
    n_units: int
    method: str  # "cluster bootstrap" or "Wilson over units" (see `clustered_rate`)

    def as_dict(self) -> dict:
        return {"k": self.k, "n": self.n, "rate": self.rate, "ci95": [self.low, self.high], "unit": self.unit,
                "n_units": self.n_units, "interval": self.method}

    def text(self) -> str:
        """'8/72 = 11% [0%, 26%] (3 of 18 clips)': the share, its interval and the unit it resamples."""
        if not self.n:
            return "0/0"
        return (f"{self.k}/{self.n} = {self.rate:.0%} [{self.low:.0%}, {self.high:.0%}] "
                f"({self.n_units} {self.unit}{'' if self.n_units == 1 else 's'})")


def clustered_rate(successes: Sequence[bool], clusters: Sequence, unit: str = UNIT_CLIP, n_boot: int = N_BOOT,
                   seed: int = 0, level: float = 0.95) -> RateInterval:
    """The share of `successes` with a percentile cluster-bootstrap interval over `clusters` (one label per item).

    Where every cluster has the same rate (all 0, all 1, a quarter of each clip's items, or a single cluster) the
    bootstrap has no spread to show and would print a zero-width interval; the Wilson interval of that rate over
    as many trials as there are clusters is reported instead: with 0 of 18 clips flipped, the rate is bounded by
    what 18 independent clips can say, and with 1 of 4 items in each of 9 clips, by what 9 clips at 0.25 can say.
    """
    flags = np.asarray(successes, dtype=np.float64).reshape(-1)
    n = len(flags)
    if n == 0:
        return RateInterval(0, 0, None, 0.0, 1.0, unit, 0, "none")
    sums, counts = _cluster_sums(flags, clusters)
    k = int(flags.sum())
    per_cluster = sums / counts
    if np.ptp(per_cluster) == 0:
        low, high = wilson_interval(float(per_cluster[0]) * len(counts), len(counts))
        return RateInterval(k, n, k / n, low, high, unit, len(counts), "Wilson over units")
    low, high = _bootstrap_ratio(sums, counts, n_boot, seed, level)
    return RateInterval(k, n, k / n, float(low), float(high), unit, len(counts), "cluster bootstrap")


def clustered_rates(successes: np.ndarray, clusters: Sequence, unit: str = UNIT_CLIP, n_boot: int = N_BOOT,
                    seed: int = 0) -> list[RateInterval]:
    """`clustered_rate` for every column of `successes` (n_items, n_columns), e.g. one per patched layer."""
    matrix = np.asarray(successes, dtype=bool)
    return [clustered_rate(matrix[:, j], clusters, unit, n_boot, seed) for j in range(matrix.shape[1])]


@dataclass(frozen=True)
class PairedTest:
    """A against B on the same items, both clustered on `unit`.

    difference = rate_a − rate_b over the shared items, with a paired cluster-bootstrap interval (clusters drawn
    with replacement, both methods' items of a drawn cluster kept together); p_value: the two-sided sign-flip
    (randomisation) test of the per-cluster difference sums, exact up to `EXACT_SIGN_FLIP_LIMIT` clusters with a
    nonzero difference, Monte Carlo beyond. `units_a_more` / `units_b_more`: clusters where A (B) flipped more.
    """

    n_items: int
    n_units: int
    unit: str
    rate_a: float
    rate_b: float
    difference: float
    low: float
    high: float
    units_a_more: int
    units_b_more: int
    items_a_not_b: int
    items_b_not_a: int
    p_value: float
    test: str


def sign_flip_p_value(differences: np.ndarray, n_random: int = 200_000, seed: int = 0) -> tuple[float, str]:
    """Two-sided p-value of sum(differences) under random signs per cluster (the clustered paired test)."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if len(d) == 0:
        return 1.0, "sign-flip over clusters (no discordant cluster)"
    observed = abs(d.sum())
    if len(d) <= EXACT_SIGN_FLIP_LIMIT:
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=len(d))))
        totals = np.abs(signs @ d)
        return float(np.mean(totals >= observed - 1e-12)), "exact sign-flip over clusters"
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(n_random, len(d)))
    totals = np.abs(signs @ d)
    return float((np.sum(totals >= observed - 1e-12) + 1) / (n_random + 1)), "Monte Carlo sign-flip over clusters"


def paired_cluster_test(a: Sequence[bool], b: Sequence[bool], clusters: Sequence, unit: str = UNIT_CLIP,
                        n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> PairedTest:
    """Compare two outcome lists over the same items (item i of `a` and of `b` are the same item, in cluster
    `clusters[i]`); see `PairedTest`."""
    flags_a = np.asarray(a, dtype=np.float64)
    flags_b = np.asarray(b, dtype=np.float64)
    if not (len(flags_a) == len(flags_b) == len(clusters)) or len(flags_a) == 0:
        raise ValueError("paired_cluster_test needs two non-empty outcome lists and one cluster label per item")
    diff = flags_a - flags_b
    sums, counts = _cluster_sums(diff, clusters)
    low, high = _bootstrap_ratio(sums, counts, n_boot, seed, level)
    p_value, test = sign_flip_p_value(sums, seed=seed)
    return PairedTest(
        n_items=len(diff), n_units=len(counts), unit=unit, rate_a=float(flags_a.mean()), rate_b=float(flags_b.mean()),
        difference=float(diff.mean()), low=float(low), high=float(high),
        units_a_more=int((sums > 0).sum()), units_b_more=int((sums < 0).sum()),
        items_a_not_b=int((diff > 0).sum()), items_b_not_a=int((diff < 0).sum()), p_value=p_value, test=test)
