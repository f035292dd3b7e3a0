"""Percentile bootstrap intervals, vectorised over resamples and deterministic with a seed."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from safeturn.metrics.rates import Rate

Statistic = Callable[..., Any]
"""A statistic of a 1-D array: `f(values) -> float`, or `f(matrix, axis=1) -> array`."""

_AXIS_AWARE: frozenset[Statistic] = frozenset(
    {np.mean, np.median, np.sum, np.std, np.var, np.min, np.max, np.nanmean, np.nanmedian}
)
_CHUNK_CELLS = 1 << 22
"""At most this many resampled values are held in memory at once (32 MiB of float64)."""


class Interval(NamedTuple):
    """A confidence interval: `low` and `high` bounds."""

    low: float
    high: float


def bootstrap_ci(
    values: Sequence[float] | npt.ArrayLike,
    statistic: Statistic = np.mean,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    *,
    vectorized: bool | None = None,
) -> Interval:
    """Percentile bootstrap interval of `statistic` over `values`.

    Resamples are drawn with replacement from a `numpy.random.Generator` seeded with `seed`, so
    the same inputs always give the same interval. The numpy reductions (`np.mean`, `np.median`,
    `np.sum`, `np.std`, `np.var`, `np.min`, `np.max`, `np.nanmean`, `np.nanmedian`) are applied
    to a whole block of resamples at once with `axis=1`; other callables are called once per
    resample unless `vectorized=True` says they accept `axis=1` too.

    Args:
        values: A non-empty 1-D sequence of numbers (booleans count as 0/1).
        statistic: The statistic to bootstrap.
        n_resamples: How many resamples to draw (at least 1).
        confidence: The interval's coverage, strictly between 0 and 1.
        seed: Seed of the random generator.
        vectorized: Whether `statistic(matrix, axis=1)` works; `None` decides from the list above.

    Returns:
        The `Interval` between the `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles of
        the resampled statistic.

    Raises:
        ValueError: If `values` is empty or not 1-D, or an argument is out of range.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-D sequence, got shape {data.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    axis_aware = statistic in _AXIS_AWARE if vectorized is None else vectorized
    stats: list[npt.NDArray[np.float64]] = []
    for picks in resample_indices(data.size, n_resamples, seed):
        block = data[picks]
        if axis_aware:
            stats.append(np.asarray(statistic(block, axis=1), dtype=np.float64))
        else:
            stats.append(np.array([float(statistic(row)) for row in block], dtype=np.float64))
    return percentile_interval(np.concatenate(stats), confidence)


def resample_indices(n: int, n_resamples: int, seed: int) -> Iterator[npt.NDArray[np.int64]]:
    """Indices of `n_resamples` resamples of `n` items with replacement, in blocks of rows.

    A block holds at most `_CHUNK_CELLS` indices, so memory stays bounded for large inputs;
    the generator is seeded with `seed`, so the same call always draws the same resamples.
    """
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def percentile_interval(stats: npt.NDArray[np.float64], confidence: float) -> Interval:
    """The `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles of resampled statistics."""
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return Interval(float(low), float(high))


def rate_within(hits: int, total: int, interval: Interval) -> Rate:
    """`hits` of `total` as a `Rate` whose interval is widened to hold the value if need be."""
    value = hits / total
    return Rate(hits, total, value, min(interval.low, value), max(interval.high, value))


def bootstrap_rate(
    hits: Sequence[bool],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Rate:
    """A `Rate` whose interval is the percentile bootstrap of the hit fraction.

    An empty sequence gives the same answer as `rate(0, 0)`: NaN and [0, 1]. When every item is
    a hit (or none is) the percentile bootstrap collapses to a single point; prefer the Wilson
    interval of `rate()` for small or extreme counts.

    Args:
        hits: One boolean per item.
        n_resamples: How many resamples to draw.
        confidence: The interval's coverage.
        seed: Seed of the random generator.

    Returns:
        `Rate(hits, total, value, low, high)` with `low <= value <= high`.
    """
    total = len(hits)
    count = sum(1 for hit in hits if hit)
    if total == 0:
        return Rate(0, 0, math.nan, 0.0, 1.0)
    flat = [float(bool(h)) for h in hits]
    return rate_within(count, total, bootstrap_ci(flat, np.mean, n_resamples, confidence, seed))
