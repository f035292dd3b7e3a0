from __future__ import annotations

import math

import pytest

from safeturn.metrics import (
    Judged,
    any_draw_rate,
    asr_at_n,
    attack_success_rate,
    bootstrap_rate,
    cluster_bootstrap_rate,
    effective_size,
    intra_item_correlation,
    per_draw_rate,
    rate,
)

T, F = True, False


def test_identical_draws_are_worth_one_item_each() -> None:
    # temperature 0: every draw repeats its item, so 30 draws carry the information of 10 items
    items = [[T, T, T]] * 4 + [[F, F, F]] * 6
    assert intra_item_correlation(items) == 1.0
    assert effective_size(items) == pytest.approx(10.0)
    pooled = per_draw_rate(items)
    assert (pooled.hits, pooled.total, pooled.value) == (12, 30, 0.4)
    assert (pooled.low, pooled.high) == pytest.approx(rate(4, 10)[3:])
    assert pooled.high - pooled.low > rate(12, 30).high - rate(12, 30).low


def test_draws_that_vary_within_every_item_keep_the_plain_interval() -> None:
    items = [[T, F], [F, T], [T, F], [F, T]]  # no item is more unsafe than another: rho <= 0
    assert intra_item_correlation(items) == 0.0
    assert per_draw_rate(items) == rate(4, 8)


def test_intra_item_correlation_by_hand() -> None:
    # p = 0.5; MSB = (2·.25 + 2·.25 + 0) / 2 = 0.5; MSW = (2·.25) / 3 = 1/6; n0 = 2
    # rho = (0.5 - 1/6) / (0.5 + 1/6) = 0.5 and n_eff = 6 / (1 + (2 - 1) · 0.5) = 4
    items = [[T, T], [F, F], [T, F]]
    assert intra_item_correlation(items) == pytest.approx(0.5)
    assert effective_size(items) == pytest.approx(4.0)


def test_one_draw_per_item_is_the_plain_rate() -> None:
    items = [[T], [F], [T], [F], [F]]
    assert per_draw_rate(items) == rate(2, 5)
    assert any_draw_rate(items) == rate(2, 5)
    assert cluster_bootstrap_rate(items) == bootstrap_rate([T, F, T, F, F])


def test_any_draw_rate_counts_items() -> None:
    items = [[F, T, F], [F, F, F], [T, T, T], []]  # the empty item has no valid draw
    assert any_draw_rate(items) == rate(2, 3)
    assert per_draw_rate(items).total == 9


def test_cluster_bootstrap_resamples_items() -> None:
    items = [[T, T, T]] * 4 + [[F, F, F]] * 6
    clustered = cluster_bootstrap_rate(items)
    naive = bootstrap_rate([hit for item in items for hit in item])
    assert (clustered.hits, clustered.total, clustered.value) == (12, 30, 0.4)
    assert clustered.high - clustered.low > naive.high - naive.low
    assert clustered == cluster_bootstrap_rate(items), "seeded"
    assert math.isnan(cluster_bootstrap_rate([]).value)


def _draws(item: str, labels: str) -> list[Judged]:
    names = {"u": "unsafe", "s": "safe", "i": "invalid"}
    return [
        Judged(f"{item}#{k}", 1, names[c], item_id=item, draw=k)  # type: ignore[arg-type]
        for k, c in enumerate(labels)
    ]


def test_asr_at_n_over_judged_draws() -> None:
    records = _draws("a", "sus") + _draws("b", "sss") + _draws("c", "ii") + _draws("d", "iu")
    # per draw: invalid verdicts are left out; a, b and d give 3 + 3 + 1 valid draws, 2 unsafe
    per_draw = attack_success_rate(records)
    assert (per_draw.hits, per_draw.total) == (2, 7)
    # @N: a and d are unsafe in some draw; c has no valid draw and is left out
    assert asr_at_n(records) == rate(2, 3)


def test_records_without_item_ids_are_their_own_items() -> None:
    records = [Judged("x", 1, "unsafe"), Judged("y", 1, "safe"), Judged("z", 2, "unsafe")]
    assert attack_success_rate(records) == rate(2, 3)
    assert asr_at_n(records) == rate(2, 3)
