"""A rate with its count and a 95 % Wilson interval, so small demo sets are not over-read."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

_Z95 = 1.959963984540054


class Rate(NamedTuple):
    """`hits` of `total`, the fraction, and its 95 % Wilson score interval."""

    hits: int
    total: int
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        counts = f"{self.hits}/{self.total}"
        return interval_text(self.value, self.low, self.high, counts) if self.total else "n/a"


def interval_text(value: float, low: float, high: float, counts: str) -> str:
    """How a rate with its interval prints: `value [low, high] (counts)`."""
    return f"{value:.1%} [{low:.0%}, {high:.0%}] ({counts})"


def wilson_bounds(p: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (95 % unless `confidence` says otherwise) of a fraction `p`.

    `n` may be fractional: an effective sample size (see `metrics.draws`) narrows or widens the
    interval without changing the estimate. The bounds always contain `p`.
    """
    if n <= 0:
        return 0.0, 1.0
    z = _Z95 if confidence == 0.95 else NormalDist().inv_cdf(0.5 + confidence / 2)
    z2 = z**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n**2)) / (1 + z2 / n)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def rate(hits: int, total: int) -> Rate:
    """Build a `Rate`; an empty denominator gives NaN value and a [0, 1] interval."""
    if hits < 0 or total < 0 or hits > total:
        raise ValueError(f"need 0 <= hits <= total, got {hits}/{total}")
    if total == 0:
        return Rate(0, 0, math.nan, 0.0, 1.0)
    p = hits / total
    return Rate(hits, total, p, *wilson_bounds(p, total))
