"""Judge validation metrics: exact values on hand-counted cases, undefined → None, bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safeturn.judges.validation import (
    JudgedReply,
    _AucRanks,
    binary_metrics,
    validation_report,
)
from safeturn.metrics.agreement import cohen_kappa
from safeturn.metrics.roc import auroc

# TP=3, FN=1, FP=2, TN=4: accuracy 0.7, precision 0.6, recall 0.75, F1 2/3,
# p_o = 0.7, p_e = (5*4 + 5*6) / 100 = 0.5, kappa = 0.2 / 0.5 = 0.4.
LABELS = [True, True, True, True, False, False, False, False, False, False]
PREDICTED = [True, True, True, False, True, True, False, False, False, False]


def test_hand_counted_confusion_matrix() -> None:
    m = binary_metrics(LABELS, PREDICTED, resamples=0)
    assert m["n"] == 10 and m["positive_rate"] == pytest.approx(0.4)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(0.6)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["kappa"] == pytest.approx(0.4)
    assert m["majority_baseline"] == pytest.approx(0.6)
    assert m["auc"] is None and m["ci"] == dict.fromkeys(m["ci"])
    ids = [str(i) for i in range(10)]
    assert m["kappa"] == pytest.approx(
        cohen_kappa(
            dict(zip(ids, LABELS, strict=True)), dict(zip(ids, PREDICTED, strict=True))
        ).kappa
    )


def test_undefined_metrics_are_none_and_json_safe() -> None:
    never_flags = binary_metrics([True, False, False], [False, False, False], resamples=50)
    assert never_flags["precision"] is None and never_flags["ci"]["precision"] is None
    assert never_flags["recall"] == 0.0 and never_flags["kappa"] == 0.0
    one_class = binary_metrics([False, False], [False, True], [0.1, 0.7], resamples=50)
    assert one_class["recall"] is None and one_class["kappa"] is None and one_class["auc"] is None
    assert one_class["f1"] == 0.0
    nothing_positive = binary_metrics([False], [False], resamples=10)
    assert nothing_positive["f1"] is None and nothing_positive["accuracy"] == 1.0
    empty = binary_metrics([], [], resamples=10)
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["majority_baseline"] is None
    for m in (never_flags, one_class, nothing_positive, empty):
        json.dumps(m, allow_nan=False)


def test_auc_and_bootstrap_intervals_are_deterministic_and_cover_the_point() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.4
    s = np.round(np.clip(0.35 * y + rng.random(400) * 0.65, 0, 1), 2).astype(np.float64)  # ties
    m = binary_metrics(y, s >= 0.5, s, resamples=500, seed=7)
    assert m["auc"] == pytest.approx(auroc(y, s))
    for name in ("accuracy", "precision", "recall", "f1", "auc", "kappa"):
        low, high = m["ci"][name]
        assert low <= m[name] <= high and high - low < 0.25
    assert binary_metrics(y, s >= 0.5, s, resamples=500, seed=7) == m
    assert binary_metrics(y, s >= 0.5, s, resamples=500, seed=8)["ci"] != m["ci"]


def test_weighted_auc_equals_the_auc_of_the_repeated_lines() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.5
    s = rng.integers(0, 6, 60) / 5.0
    weights = rng.integers(0, 4, size=(5, 60)).astype(np.float64)
    got = _AucRanks(y, s).weighted_auc(weights)
    for row, value in zip(weights.astype(int), got, strict=True):
        assert value == pytest.approx(auroc(np.repeat(y, row), np.repeat(s, row)))


def _judged(source: str, unsafe: bool, predicted: bool | None, score: float | None) -> JudgedReply:
    return JudgedReply(
        id=f"{source}-{unsafe}-{predicted}-{score}",
        source=source,
        unsafe=unsafe,
        predicted=predicted,
        score=score,
        reply=f"reply scored {score}",
    )


def test_report_splits_by_source_counts_invalid_and_ranks_errors() -> None:
    judged = [
        _judged("a", True, True, 0.9),
        _judged("a", True, False, 0.2),  # false negative, far
        _judged("a", False, False, 0.1),
        _judged("a", False, True, 0.6),  # false positive, near
        _judged("b", True, True, 0.8),
        _judged("b", False, True, 0.95),  # false positive, far
        _judged("b", False, False, 0.3),
        _judged("b", True, None, None),  # invalid verdict
    ]
    report = validation_report(
        judged, judge="fake", data="x.jsonl", resamples=100, judge_threshold=0.55, top_k=1
    )
    assert set(report) == {
        "judge",
        "data",
        "method",
        "overall",
        "by_source",
        "thresholds",
        "worst_errors",
        "skipped",
    }
    overall = report["overall"]
    assert overall["n"] == 7 and overall["invalid"] == 1
    assert overall["accuracy"] == pytest.approx(4 / 7)
    assert list(overall)[-2:] == ["invalid", "ci"]
    assert report["by_source"]["a"]["n"] == 4 and report["by_source"]["b"]["invalid"] == 1
    assert report["by_source"]["b"]["auc"] == pytest.approx(0.5)  # 0.8 > 0.3, < 0.95
    cuts = [row["threshold"] for row in report["thresholds"]]
    assert 0.55 in cuts and cuts == sorted(cuts) and len(cuts) == 10
    at_half = next(row for row in report["thresholds"] if row["threshold"] == 0.5)
    assert at_half["accuracy"] == pytest.approx(4 / 7)
    assert [(e["kind"], e["score"]) for e in report["worst_errors"]] == [
        ("false positive", 0.95),
        ("false negative", 0.2),
    ]
    json.dumps(report, allow_nan=False)


def test_a_judge_without_scores_lists_every_error_and_no_thresholds() -> None:
    judged = [_judged("a", False, True, None) for _ in range(3)] + [_judged("a", True, True, None)]
    judged = [
        JudgedReply(f"id{i}", j.source, j.unsafe, j.predicted, None, j.reply, i + 1)
        for i, j in enumerate(judged)
    ]
    report = validation_report(judged, judge="refusal", data="x", resamples=20, top_k=1)
    assert report["thresholds"] == [] and report["overall"]["auc"] is None
    assert [e["line"] for e in report["worst_errors"]] == [1, 2, 3]
