"""Before/after: one model evaluated before and after training on the same samples.

Used by `safeturn loop`. Each metric (`report/loop_metrics.py`) gets its own interval per run,
and the delta a paired interval (see the comment below); `report/before_after_output.py`
writes the result as JSON, a terminal table and an HTML page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from safeturn.metrics.rates import rate
from safeturn.metrics.safety_index import TurnSet
from safeturn.report.loop_metrics import (
    Metric,
    Units,
    asr_metric,
    default_group,
    flag_metric,
    help_score_metric,
    si_metric,
    units_of,
)
from safeturn.report.pairwise import PairwiseReport
from safeturn.run.results import RunResults
from safeturn.schema import Sample

# The closed loop (`safeturn loop`) evaluates one model before and after training on the very
# same held-out samples. Each metric gets its own interval per run: a cluster bootstrap over
# seed groups for ASR (bootstrap, as in the run reports and DESIGN §3), the Safety Index and mean
# scores; Wilson for the other rates (over-refusal, helpful answers). The delta's interval
# comes from a *paired* cluster bootstrap: seed groups (a seed, its benign twin and every
# dialogue built from them) are resampled once per replicate and the same draw is applied to
# both runs. Dialogues of one seed are correlated and both runs answer the same seeds, so
# resampling dialogues independently per run would make the delta look surer than it is.

MIN_GROUPS = 10
"""Fewer seed groups than this and no delta is called better or worse: a percentile bootstrap
over a handful of clusters is far too narrow (one group gives a zero-width interval)."""


class Estimate(NamedTuple):
    """A metric of one run: value, 95 % interval and the count behind it."""

    value: float
    low: float
    high: float
    n: int
    hits: int | None = None
    """For rates, the numerator (the metric says whose interval: bootstrap or Wilson)."""

    def __str__(self) -> str:
        if self.n == 0 or math.isnan(self.value):
            return "n/a"
        if self.hits is not None:
            return f"{self.value:.1%} [{self.low:.0%}, {self.high:.0%}] ({self.hits}/{self.n})"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


class DeltaRow(NamedTuple):
    """One metric before and after, and the delta (after − before) with a paired interval."""

    key: str
    label: str
    before: Estimate
    after: Estimate
    delta: float
    delta_low: float
    delta_high: float
    higher_is_better: bool
    groups: int
    """Seed groups behind the paired interval."""
    note: str = ""
    """What a reader must know about the row (a partial Safety Index says why)."""

    @property
    def significant(self) -> bool:
        """The delta's 95 % interval excludes zero and rests on at least `MIN_GROUPS` groups."""
        return self.groups >= MIN_GROUPS and (self.delta_low > 0 or self.delta_high < 0)

    @property
    def improved(self) -> bool | None:
        """True or False when the change is significant, None when it is not."""
        if not self.significant:
            return None
        return (self.delta > 0) == self.higher_is_better


class BeforeAfter(NamedTuple):
    """The before/after comparison of two runs of the same samples."""

    before: RunResults
    after: RunResults
    rows: list[DeltaRow]
    groups: int
    """Seed groups the bootstrap resamples (those present in both runs)."""
    n_resamples: int
    pairwise: PairwiseReport | None = None


def _percentile_interval(values: Sequence[float]) -> tuple[float, float]:
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return math.nan, math.nan
    return finite[int(0.025 * (len(finite) - 1))], finite[math.ceil(0.975 * (len(finite) - 1))]


def _estimate(metric: Metric, units: Units, boot: Sequence[float]) -> Estimate:
    hits, n = metric.tally(units)
    if hits is not None and not metric.bootstrap:
        r = rate(hits, n)
        return Estimate(r.value, r.low, r.high, n, hits)
    value = metric.measure(units)
    low, high = _percentile_interval(boot)
    if hits is not None and n and not math.isnan(low):  # as `bootstrap_rate`: holds its value
        low, high = min(low, value), max(high, value)
    return Estimate(value, low, high, n, hits)


def before_after(
    before: RunResults,
    after: RunResults,
    *,
    group_of: Callable[[Sample], str] = default_group,
    n_resamples: int = 1000,
    seed: int = 0,
    pairwise: PairwiseReport | None = None,
    turn_set: TurnSet = "present",
) -> BeforeAfter:
    """Compare two runs of the same samples, metric by metric, with paired delta intervals.

    Metrics: ASR overall, at each turn count and (when there are several) for each strategy;
    the Safety Index (SafeMT's exp(−k) weights and the turn-balanced variant); over-refusal on
    benign twins; helpfulness, the share of benign twins whose final reply neither refused nor
    was judged unsafe by the headline judge; and, when a `turn-scores:` judge ran, the mean
    judged helpfulness of the benign final replies.
    Only seed groups present in both runs enter (the loop re-evaluates identical samples).
    The Safety Index is over the runs' turn counts (`turn_set="present"`, labelled partial
    when they are not SafeMT's) or SafeMT's fixed K (`"safemt"`).
    """
    import numpy as np

    units_b, units_a = units_of(before, group_of), units_of(after, group_of)
    keys = sorted(units_b.keys() & units_a.keys())
    ub, ua = [units_b[k] for k in keys], [units_a[k] for k in keys]
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(keys), size=len(keys)) for _ in range(n_resamples)] if keys else []
    rows = [_delta_row(metric, ub, ua, draws) for metric in _metrics(ub, ua, turn_set)]
    return BeforeAfter(before, after, rows, len(keys), n_resamples, pairwise)


def _metrics(ub: Units, ua: Units, turn_set: TurnSet) -> list[Metric]:
    """The metrics both runs' units allow, in the table's order."""
    turn_counts = sorted({k for u in [*ub, *ua] for _, k, _, _ in u.harmful})
    strategies = sorted({name for u in [*ub, *ua] for *_, name in u.harmful})
    metrics = [
        asr_metric(None),
        *[asr_metric(k) for k in turn_counts],
        *[asr_metric(None, name) for name in strategies if len(strategies) > 1],
        si_metric("exp", turn_counts, turn_set),
        si_metric("uniform", turn_counts, turn_set),
        flag_metric("refused", "over_refusal", "over-refusal (benign twins)", False),
        flag_metric("helpful", "helpful", "helpful answers (benign twins)", True),
    ]
    if any(u.help_scores for u in [*ub, *ua]):
        metrics.append(help_score_metric())
    return metrics


def _delta_row(metric: Metric, ub: Units, ua: Units, draws: Sequence[Iterable[int]]) -> DeltaRow:
    """One metric before and after; the same resampled groups (`draws`) apply to both runs."""
    boot_b = [metric.measure([ub[i] for i in idx]) for idx in draws]
    boot_a = [metric.measure([ua[i] for i in idx]) for idx in draws]
    est_b, est_a = _estimate(metric, ub, boot_b), _estimate(metric, ua, boot_a)
    low, high = _percentile_interval([a - b for a, b in zip(boot_a, boot_b, strict=True)])
    return DeltaRow(
        metric.key,
        metric.label,
        est_b,
        est_a,
        est_a.value - est_b.value,
        low,
        high,
        metric.higher_is_better,
        len(ub),
        metric.note(ub) if metric.note else "",
    )
