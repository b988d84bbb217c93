"""Paired significance of base vs V-Reason on the same items: exact McNemar and a paired bootstrap.

Both compare the two modes item by item (every item is answered in both), which is far more sensitive
than comparing two accuracies as if they came from different samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import comb

import numpy as np

# Resamples are drawn in blocks of about this many indices, so memory stays small for large datasets.
_BLOCK_INDICES = 2_000_000


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" the b + c discordant pairs split as Binomial(n, 1/2).

    `b`: items only the first mode got right, `c`: only the second. Computed with exact integers, so it
    stays right for thousands of pairs; no discordant pairs gives 1.0.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


@dataclass(frozen=True)
class Bootstrap:
    """A paired bootstrap of mean(y - x): the observed difference, its 95 % percentile interval and a two-sided p."""

    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_resamples: int


def paired_bootstrap(x: Sequence[float], y: Sequence[float], n: int = 10000, seed: int = 0) -> Bootstrap:
    """Resample items (pairs kept together) `n` times and read the spread of the mean difference y - x.

    The p-value is twice the share of resampled means on the far side of 0 from the observed one, with
    the usual +1 so a finite number of resamples never claims p = 0; it agrees with whether the 95 %
    interval excludes 0. Raises ValueError for unequal or empty inputs (nothing to compare).
    """
    diffs = np.asarray(y, dtype=np.float64) - np.asarray(x, dtype=np.float64) if len(x) == len(y) else None
    if diffs is None or diffs.size == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length, non-empty sequences, got {len(x)} and {len(y)}")
    if n < 1:
        raise ValueError(f"paired_bootstrap needs at least one resample, got n={n}")
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_INDICES // diffs.size)
    means = np.concatenate(
        [
            diffs[rng.integers(0, diffs.size, (min(block, n - done), diffs.size))].mean(axis=1)
            for done in range(0, n, block)
        ]
    )
    low, high = np.percentile(means, [2.5, 97.5])
    at_or_below, at_or_above = int(np.sum(means <= 0)), int(np.sum(means >= 0))
    p_value = min(1.0, 2 * (min(at_or_below, at_or_above) + 1) / (n + 1))
    return Bootstrap(float(diffs.mean()), float(low), float(high), p_value, n)
