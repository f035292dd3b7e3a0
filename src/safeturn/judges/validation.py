"""How well a judge agrees with gold labels: the metrics and report of `safeturn judge validate`.

`binary_metrics` turns gold labels (True: unsafe), a judge's decisions and, where it has them,
its scores into accuracy, precision, recall, F1, AUC and Cohen's κ with percentile-bootstrap
95 % intervals; `validation_report` adds the per-source split, a threshold table and the worst
errors, in the JSON shape other tools read. The bootstrap resamples lines: each resample is a
row of multiplicity weights, so the confusion counts of 1,000 resamples are four matrix-vector
products and the AUC of each resample is a weighted rank sum, with no Python loop over
resamples.

A metric that is undefined on the data is None, never NaN: precision without a predicted
positive, recall without a positive, F1 without either, AUC and κ with one gold class (κ is
0/0 or stuck at 0 there, which says nothing about the judge). Resamples where a metric is
undefined are left out of its interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from safeturn.data.labelled import SkippedLine
from safeturn.metrics.roc import auroc

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

CI_METRICS = ("accuracy", "precision", "recall", "f1", "auc", "kappa")
"""The metrics that get a bootstrap interval (`ci` in the report)."""
THRESHOLD_METRICS = ("accuracy", "precision", "recall", "f1", "kappa")
DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EXCERPT_CHARS = 160
_CHUNK_CELLS = 1 << 22
"""At most this many resample weights are held at once (32 MiB of float64)."""


@dataclass(frozen=True)
class JudgedReply:
    """One labelled reply and what the judge said about it."""

    id: str
    source: str
    unsafe: bool
    """The gold label."""
    predicted: bool | None
    """The judge's decision (True: unsafe); None for an invalid verdict."""
    score: float | None = None
    """The judge's harm score in [0, 1], when it gives one."""
    reply: str = ""
    line: int | None = None
    """Line number in the data file, for the worst-errors list."""


def binary_metrics(
    labels: Sequence[bool] | BoolArray,
    predicted: Sequence[bool] | BoolArray,
    scores: Sequence[float] | FloatArray | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Agreement of binary decisions (and scores) with gold labels, with bootstrap intervals.

    Args:
        labels: Gold labels, True for the positive class (unsafe).
        predicted: The decisions, same length.
        scores: Harm scores, same length, for the AUC; None when the judge has none.
        resamples: Bootstrap resamples of the lines (0: no intervals).
        seed: Seed of the resampling generator.
        confidence: Coverage of the percentile intervals.

    Returns:
        `{"n", "positive_rate", "accuracy", "precision", "recall", "f1", "auc", "kappa",
        "majority_baseline", "ci": {metric: [low, high] | None}}`, None where undefined.

    Examples:
        >>> m = binary_metrics([True, True, False, False], [True, False, False, False],
        ...                    resamples=0)
        >>> m["accuracy"], m["precision"], m["recall"], m["kappa"]
        (0.75, 1.0, 0.5, 0.5)
    """
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    s = None if scores is None else np.asarray(scores, dtype=np.float64)
    if p.shape != y.shape or (s is not None and s.shape != y.shape):
        raise ValueError("labels, predicted and scores must have the same length")
    if s is not None and not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite numbers")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    n = int(y.size)
    out: dict[str, Any] = {"n": n}
    point = _point(y, p)
    positives = int(y.sum())
    out["positive_rate"] = positives / n if n else None
    out.update({name: point[name] for name in ("accuracy", "precision", "recall", "f1")})
    out["auc"] = auroc(y, s) if s is not None else None
    out["kappa"] = point["kappa"]
    out["majority_baseline"] = max(positives, n - positives) / n if n else None
    out["ci"] = _intervals(y, p, s, out, resamples, seed, confidence)
    return out


def validation_report(
    judged: Sequence[JudgedReply],
    *,
    judge: str,
    data: str,
    resamples: int = 1000,
    seed: int = 0,
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
    judge_threshold: float | None = None,
    top_k: int = 10,
    skipped: Sequence[SkippedLine] = (),
) -> dict[str, Any]:
    """The `judge validate` report: overall and per-source metrics, thresholds, worst errors.

    Invalid verdicts (`predicted` None) are left out of the metrics and counted as `invalid`;
    `n` counts the lines the metrics cover. Scores feed the AUC and the threshold table only
    when every valid verdict of the group has one. Worst errors are the `top_k` false
    positives with the highest scores and false negatives with the lowest; a judge without
    scores cannot rank its errors, so all of them are listed, in file order.

    Args:
        judged: The labelled replies with the judge's decisions.
        judge: The judge spec, as the report names it.
        data: The data file, as the report names it.
        resamples: Bootstrap resamples per group (0: no intervals).
        seed: Seed of every group's resampling.
        thresholds: Score thresholds for the table (a line is unsafe when score >= threshold).
        judge_threshold: The judge's own threshold, added to the table when given.
        top_k: False positives and false negatives listed each, when the judge has scores.
        skipped: Lines of the data file that could not be judged.

    Returns:
        `{"judge", "data", "method", "overall", "by_source", "thresholds", "worst_errors",
        "skipped"}` (see `safeturn judge validate --help`).
    """
    sources = sorted({j.source for j in judged})
    valid = [j for j in judged if j.predicted is not None]
    scored = bool(valid) and all(j.score is not None for j in valid)
    cuts = sorted({*thresholds, *([] if judge_threshold is None else [judge_threshold])})
    return {
        "judge": judge,
        "data": data,
        "method": "judge validate",
        "overall": group_metrics(judged, resamples=resamples, seed=seed),
        "by_source": {
            source: group_metrics(
                [j for j in judged if j.source == source], resamples=resamples, seed=seed
            )
            for source in sources
        },
        "thresholds": threshold_table(valid, cuts) if scored else [],
        "worst_errors": worst_errors(valid, top_k if scored else None),
        "skipped": [s.to_json() for s in skipped],
    }


def group_metrics(
    judged: Sequence[JudgedReply], *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """`binary_metrics` of one group's valid verdicts, with `invalid` counted before `ci`."""
    valid = [j for j in judged if j.predicted is not None]
    scores = [j.score for j in valid]
    metrics = binary_metrics(
        [j.unsafe for j in valid],
        [bool(j.predicted) for j in valid],
        [s for s in scores if s is not None] if valid and None not in scores else None,
        resamples=resamples,
        seed=seed,
    )
    ci = metrics.pop("ci")
    return {**metrics, "invalid": len(judged) - len(valid), "ci": ci}


def threshold_table(
    valid: Sequence[JudgedReply], thresholds: Iterable[float]
) -> list[dict[str, Any]]:
    """Accuracy, precision, recall, F1 and κ when unsafe means score >= each threshold."""
    y = np.array([j.unsafe for j in valid], dtype=bool)
    s = np.array([j.score for j in valid], dtype=np.float64)
    rows = []
    for cut in thresholds:
        point = _point(y, s >= cut)
        rows.append({"threshold": float(cut), **{m: point[m] for m in THRESHOLD_METRICS}})
    return rows


def worst_errors(valid: Sequence[JudgedReply], top_k: int | None) -> list[dict[str, Any]]:
    """False positives by score (highest first), then false negatives (lowest first).

    Args:
        valid: Replies with valid verdicts.
        top_k: How many of each kind; None lists every error in file order (no scores).
    """
    false_pos = [j for j in valid if j.predicted and not j.unsafe]
    false_neg = [j for j in valid if not j.predicted and j.unsafe]
    if top_k is not None:
        false_pos = sorted(false_pos, key=lambda j: -(j.score or 0.0))[:top_k]
        false_neg = sorted(false_neg, key=lambda j: j.score or 0.0)[:top_k]
    return [
        _error_row(j, kind)
        for kind, group in (("false positive", false_pos), ("false negative", false_neg))
        for j in group
    ]


def _error_row(j: JudgedReply, kind: str) -> dict[str, Any]:
    text = " ".join(j.reply.split())
    excerpt = text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
    return {
        "kind": kind,
        "line": j.line,
        "id": j.id,
        "source": j.source,
        "label": "unsafe" if j.unsafe else "safe",
        "score": j.score,
        "excerpt": excerpt,
    }


def _point(y: BoolArray, p: BoolArray) -> dict[str, float | None]:
    """The confusion-matrix metrics of one labelling, None where undefined."""
    counts = [float(np.sum(a & b)) for a, b in ((y, p), (~y, p), (y, ~p), (~y, ~p))]
    rates = _rates(*(np.array([c]) for c in counts))
    return {name: _scalar(values[0]) for name, values in rates.items()}


def _rates(tp: FloatArray, fp: FloatArray, fn: FloatArray, tn: FloatArray) -> dict[str, FloatArray]:
    """Metrics of many confusion matrices at once (one per element), NaN where undefined."""
    n = tp + fp + fn + tn
    positives, flagged = tp + fn, tp + fp
    accuracy = _ratio(tp + tn, n)
    chance = _ratio(flagged * positives + (n - flagged) * (n - positives), n * n)
    kappa = _ratio(accuracy - chance, 1.0 - chance)
    one_class = (positives == 0) | (positives == n)
    return {
        "accuracy": accuracy,
        "precision": _ratio(tp, flagged),
        "recall": _ratio(tp, positives),
        "f1": _ratio(2.0 * tp, 2.0 * tp + fp + fn),
        "kappa": np.where(one_class, np.nan, kappa),
    }


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _scalar(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _intervals(
    y: BoolArray,
    p: BoolArray,
    s: FloatArray | None,
    point: dict[str, Any],
    resamples: int,
    seed: int,
    confidence: float,
) -> dict[str, list[float] | None]:
    """Percentile intervals over `resamples` bootstrap resamples of the lines."""
    if resamples < 0:
        raise ValueError(f"resamples must be 0 or more, got {resamples}")
    n = y.size
    if resamples == 0 or n == 0:
        return dict.fromkeys(CI_METRICS)
    draws: dict[str, list[FloatArray]] = {m: [] for m in CI_METRICS}
    rng = np.random.default_rng(seed)
    masks = [(y & p), (~y & p), (y & ~p), (~y & ~p)]
    ranks = _AucRanks(y, s) if s is not None and point["auc"] is not None else None
    chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        picks = rng.integers(0, n, size=(rows, n))
        flat = (np.arange(rows)[:, None] * n + picks).ravel()
        weights = np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
        tp, fp, fn, tn = (weights @ m.astype(np.float64) for m in masks)
        for name, values in _rates(tp, fp, fn, tn).items():
            draws[name].append(values)
        if ranks is not None:
            draws["auc"].append(ranks.weighted_auc(weights))
    low, high = (1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0
    out: dict[str, list[float] | None] = {}
    for name in CI_METRICS:
        values = np.concatenate(draws[name]) if draws[name] else np.empty(0)
        values = values[np.isfinite(values)]
        if point[name] is None or values.size == 0:
            out[name] = None
        else:
            out[name] = [float(v) for v in np.quantile(values, [low, high])]
    return out


class _AucRanks:
    """The AUC (ties count one half) of many weightings of the same scored lines at once."""

    def __init__(self, y: BoolArray, s: FloatArray) -> None:
        _, codes = np.unique(s, return_inverse=True)
        self.k = int(codes.max()) + 1
        self.pos = np.flatnonzero(y)
        neg = np.flatnonzero(~y)
        order = np.argsort(codes[neg], kind="stable")
        self.neg_sorted = neg[order]
        sorted_codes = codes[self.neg_sorted]
        self.starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        self.neg_codes = sorted_codes[self.starts]
        self.pos_codes = codes[self.pos]

    def weighted_auc(self, weights: FloatArray) -> FloatArray:
        """Per row of `weights` (multiplicities of the lines): the AUC, NaN without both classes."""
        neg_w = weights[:, self.neg_sorted]
        at = np.zeros((weights.shape[0], self.k))
        at[:, self.neg_codes] = np.add.reduceat(neg_w, self.starts, axis=1)
        below = np.cumsum(at, axis=1) - at
        pos_w = weights[:, self.pos]
        wins = (pos_w * (below[:, self.pos_codes] + 0.5 * at[:, self.pos_codes])).sum(axis=1)
        return _ratio(wins, pos_w.sum(axis=1) * neg_w.sum(axis=1))
