from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safeturn.metrics import rate, win_rate


def test_ties_count_half() -> None:
    result = win_rate(["a", "a", "b", "tie", "tie", "a"])
    assert (result.wins_a, result.wins_b, result.ties, result.total) == (3, 1, 2, 6)
    assert result.value == pytest.approx((3 + 1) / 6)
    assert result.low <= result.value <= result.high
    assert result == win_rate(["a", "a", "b", "tie", "tie", "a"])  # seeded
    assert str(result).startswith("66.7% [")


def test_one_sided_results_keep_a_real_interval() -> None:
    # the percentile bootstrap alone would say [1, 1]: the Wilson bound keeps 5 of 5 honest
    all_a = win_rate(["a"] * 5)
    assert all_a.value == 1.0 and all_a.high == 1.0
    assert all_a.low == pytest.approx(rate(5, 5).low)
    all_b = win_rate(["b"] * 5)
    assert (all_b.value, all_b.low) == (0.0, 0.0)
    assert all_b.high == pytest.approx(rate(0, 5).high)
    assert win_rate(["tie"] * 3).value == 0.5
    assert win_rate(["a"] * 50).low > win_rate(["a"] * 5).low, "more data, tighter interval"


def test_empty_and_bad_outcomes() -> None:
    empty = win_rate([])
    assert math.isnan(empty.value) and (empty.low, empty.high) == (0.0, 1.0)
    assert str(empty) == "n/a"
    with pytest.raises(ValueError, match="'c'"):
        win_rate(["a", "c"])  # type: ignore[list-item]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "tie"]), min_size=1, max_size=50))
def test_swapping_sides_mirrors_the_rate(outcomes: list[str]) -> None:
    swap = {"a": "b", "b": "a", "tie": "tie"}
    forward = win_rate(outcomes, n_resamples=200)  # type: ignore[arg-type]
    backward = win_rate([swap[o] for o in outcomes], n_resamples=200)  # type: ignore[misc]
    assert forward.value + backward.value == pytest.approx(1.0)
    assert 0.0 <= forward.low <= forward.value <= forward.high <= 1.0


def test_a_higher_confidence_gives_a_wider_interval() -> None:
    outcomes = ["a"] * 7 + ["b"] * 3
    narrow, wide = win_rate(outcomes, confidence=0.8), win_rate(outcomes, confidence=0.99)
    assert wide.low < narrow.low and wide.high > narrow.high
    # the Wilson part follows the requested coverage too (12 of 12 is where it decides)
    assert win_rate(["a"] * 12, confidence=0.99).low < win_rate(["a"] * 12).low
