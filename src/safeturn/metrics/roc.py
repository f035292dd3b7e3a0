"""Ranking metrics: AUROC and the threshold for a false-positive budget.

Both trained heads (the classifier judge and the moderator) report AUROC from here. The same
`threshold_at_fpr` picks the moderator's shipped threshold on validation and its TPR@5 %FPR
operating point on test, so the two are defined identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Scores = Sequence[float] | npt.NDArray[np.float64]


def auroc(labels: Sequence[bool] | npt.NDArray[np.bool_], scores: Scores) -> float | None:
    """Area under the ROC curve (ties count one half); None without both classes.

    Examples:
        >>> auroc([True, False, True, False], [0.9, 0.1, 0.4, 0.4])
        0.875
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = average[inverse]
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def threshold_at_fpr(negatives: Scores, fpr: float) -> float:
    """The lowest threshold flagging at most `fpr` of `negatives` (flag: score >= threshold).

    Examples:
        >>> threshold_at_fpr([0.1, 0.2, 0.3, 0.9], 0.25) > 0.3
        True
    """
    values = np.sort(np.asarray(negatives, dtype=np.float64))[::-1]
    if values.size == 0:
        return 0.5
    allowed = int(np.floor(fpr * values.size + 1e-9))
    if allowed >= values.size:
        return float(values[-1])
    return float(np.nextafter(values[allowed], np.inf))


def rate(flags: Sequence[bool] | npt.NDArray[np.bool_]) -> float | None:
    """The share of True values; None for an empty sequence."""
    array = np.asarray(flags, dtype=bool)
    return float(array.mean()) if array.size else None


def tpr_at_fpr(
    labels: Sequence[bool] | npt.NDArray[np.bool_], scores: Scores, fpr: float
) -> tuple[float | None, float]:
    """(TPR, threshold) at the operating point that keeps the false-positive rate <= `fpr`."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    threshold = threshold_at_fpr(s[~y], fpr)
    return rate(s[y] >= threshold), threshold
