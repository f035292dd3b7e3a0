"""Rates over items answered several times (`safeturn eval --samples N`).

Two readings of N draws per item:

- *per draw* — hits over all draws, the usual rate. Draws of one item are not independent (at
  temperature 0 they are copies), so the Wilson interval is taken over Kish's effective sample
  size `n / (1 + (m − 1) ρ)`, with m the mean draws per item and ρ the intra-item correlation
  (one-way ANOVA estimate, clipped to [0, 1]). ρ = 0 gives the plain Wilson interval over all
  draws; ρ = 1 gives the Wilson interval over items. When ρ cannot be estimated (one item, or
  every draw has the same outcome) it is taken as 1, the cautious choice.
- *any of N* (ASR@N) — an item is a hit when any of its draws is; Wilson over items.

With one draw per item both readings equal `rate(hits, total)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from safeturn.metrics.bootstrap import (
    bootstrap_rate,
    percentile_interval,
    rate_within,
    resample_indices,
)
from safeturn.metrics.rates import Rate, rate, wilson_bounds

Items = Sequence[Sequence[bool]]
"""One sequence of draw outcomes per item (empty sequences are ignored)."""


def intra_item_correlation(items: Items) -> float:
    """ρ: how alike the draws of one item are, from 0 (independent) to 1 (identical).

    Args:
        items: Draw outcomes per item.

    Returns:
        The ANOVA estimate of the intra-class correlation for unequal group sizes, clipped to
        [0, 1]; 1.0 when it cannot be estimated (fewer than two items, or no variation at all);
        0.0 when every item has a single draw (nothing is shared).
    """
    groups = [g for g in items if g]
    k, n = len(groups), sum(len(g) for g in groups)
    if k == n:
        return 0.0
    if k < 2:
        return 1.0
    p = sum(sum(g) for g in groups) / n
    means = [sum(g) / len(g) for g in groups]
    between = math.fsum(len(g) * (m - p) ** 2 for g, m in zip(groups, means, strict=True)) / (k - 1)
    within = math.fsum(len(g) * m * (1 - m) for g, m in zip(groups, means, strict=True)) / (n - k)
    n0 = (n - sum(len(g) ** 2 for g in groups) / n) / (k - 1)
    denominator = between + (n0 - 1) * within
    if denominator <= 0:
        return 1.0
    return min(1.0, max(0.0, (between - within) / denominator))


def effective_size(items: Items) -> float:
    """Kish's effective sample size of the pooled draws: n / (1 + (m − 1) ρ)."""
    groups = [g for g in items if g]
    n = sum(len(g) for g in groups)
    if n == 0:
        return 0.0
    mean_draws = n / len(groups)
    return n / (1 + (mean_draws - 1) * intra_item_correlation(groups))


def per_draw_rate(items: Items) -> Rate:
    """Hits over all draws, with a Wilson interval on the effective sample size.

    Args:
        items: Draw outcomes per item.

    Returns:
        `Rate(hits, draws, value, low, high)`; NaN with [0, 1] when there is no draw.
    """
    flat = [hit for group in items for hit in group]
    hits, total = sum(flat), len(flat)
    if total == 0 or all(len(group) <= 1 for group in items):
        return rate(hits, total)
    value = hits / total
    return Rate(hits, total, value, *wilson_bounds(value, effective_size(items)))


def any_draw_rate(items: Items) -> Rate:
    """Items with at least one hit among their draws (ASR@N), over items with any draw.

    Args:
        items: Draw outcomes per item.

    Returns:
        `Rate(items hit, items, value, low, high)` with a Wilson interval over items.
    """
    groups = [g for g in items if g]
    return rate(sum(any(g) for g in groups), len(groups))


def cluster_bootstrap_rate(
    items: Items, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Rate:
    """Hits over all draws, with a percentile bootstrap that resamples items, not draws.

    With one draw per item this is `bootstrap_rate` over the draws.

    Args:
        items: Draw outcomes per item.
        n_resamples: How many resamples of the items (all draws of each) to draw.
        confidence: The interval's coverage.
        seed: Seed of the random generator.

    Returns:
        The `Rate`; NaN with [0, 1] when there is no draw.
    """
    groups = [g for g in items if g]
    flat = [hit for group in groups for hit in group]
    if all(len(group) == 1 for group in groups):
        return bootstrap_rate(flat, n_resamples, confidence, seed)
    hits = np.array([sum(g) for g in groups], dtype=np.float64)
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    ratios = [
        hits[picks].sum(axis=1) / sizes[picks].sum(axis=1)
        for picks in resample_indices(len(groups), n_resamples, seed)
    ]
    interval = percentile_interval(np.concatenate(ratios), confidence)
    return rate_within(sum(flat), len(flat), interval)
