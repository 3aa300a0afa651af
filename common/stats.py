"""The statistics every layer reports: Wilson intervals for rates, cluster bootstrap intervals for means."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a binomial rate; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def cluster_bootstrap_mean(
    values: np.ndarray, clusters: Sequence, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over items and its percentile interval, resampling whole clusters (clips), not items.

    `values` is (n_items, ...) ; returns (mean, low, high), each of shape values.shape[1:].
    Items that share a clip are not independent, so the bootstrap draws clips with replacement and keeps
    all items of each drawn clip.
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray([str(c) for c in clusters])
    unique = np.unique(labels)
    members = [np.flatnonzero(labels == u) for u in unique]
    sums = np.stack([values[m].sum(axis=0) for m in members])  # (n_clusters, ...)
    counts = np.array([len(m) for m in members], dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(unique), size=(n_boot, len(unique)))
    boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1).reshape((n_boot,) + (1,) * (values.ndim - 1))
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    return values.mean(axis=0), low, high
