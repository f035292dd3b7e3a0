"""Pairwise win rate of system A against system B, ties counted as half a win.

The interval is the wider of a percentile bootstrap over comparisons and the Wilson interval of
the score fraction: the bootstrap collapses to a point when every comparison has the same
outcome (12 wins of 12 would read [100 %, 100 %]), the Wilson interval does not, and it is
conservative with ties, whose half-scores vary less than wins and losses.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Literal, NamedTuple

from safeturn.metrics.bootstrap import bootstrap_ci
from safeturn.metrics.rates import interval_text, wilson_bounds

Outcome = Literal["a", "b", "tie"]
"""Which side won one comparison."""

_SCORE: dict[str, float] = {"a": 1.0, "b": 0.0, "tie": 0.5}


class WinRate(NamedTuple):
    """A's win rate over B with the raw counts and a percentile bootstrap interval."""

    wins_a: int
    wins_b: int
    ties: int
    total: int
    value: float
    """(wins_a + ties / 2) / total; NaN when there are no comparisons."""
    low: float
    high: float

    def __str__(self) -> str:
        counts = f"A {self.wins_a} / B {self.wins_b} / tie {self.ties}"
        return interval_text(self.value, self.low, self.high, counts) if self.total else "n/a"


def win_rate(
    outcomes: Iterable[Outcome],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Win rate of A vs B, ties as half, with a 95 % interval (see the module docstring).

    Args:
        outcomes: One `"a"`, `"b"` or `"tie"` per compared item.
        n_resamples: Bootstrap resamples.
        confidence: The interval's coverage.
        seed: Seed of the bootstrap generator.

    Returns:
        The `WinRate`; with no outcomes, value NaN and interval [0, 1].

    Raises:
        ValueError: If an outcome is not `"a"`, `"b"` or `"tie"`.
    """
    items = list(outcomes)
    unknown = set(items) - _SCORE.keys()
    if unknown:
        raise ValueError(f"unknown outcomes {sorted(unknown)}; use 'a', 'b' or 'tie'")
    counts = Counter(items)
    total = len(items)
    if total == 0:
        return WinRate(0, 0, 0, 0, math.nan, 0.0, 1.0)
    scores = [_SCORE[o] for o in items]
    value = math.fsum(scores) / total
    low, high = bootstrap_ci(scores, n_resamples=n_resamples, confidence=confidence, seed=seed)
    wilson_low, wilson_high = wilson_bounds(value, total, confidence)
    return WinRate(
        counts["a"],
        counts["b"],
        counts["tie"],
        total,
        value,
        min(low, wilson_low, value),
        max(high, wilson_high, value),
    )
