"""The turn-aware GRPO reward against groups worked out by hand, plus its TRL adapter."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from safeturn.judges.turn_scores import TurnScores
from safeturn.train.rewards import (
    RewardInputError,
    TurnAwareRewardConfig,
    make_per_completion_reward,
    make_turn_aware_reward,
    per_completion_rewards,
    turn_aware_rewards,
)

# Formula tests use β ≥ 1 too; the incentive warning is tested in test_reward_incentives.py.
pytestmark = pytest.mark.filterwarnings("ignore:reward beta=:UserWarning")


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_two_by_two_by_hand() -> None:
    config = TurnAwareRewardConfig(lam=1.0, tau=0.8, beta=0.5)
    helpful = [[0.5, 1.0], [1.0, 0.0]]
    safe = [[1.0, 0.0], [1.0, 1.0]]
    # turn 0: safe (1, 1) → μ = 1, Var = 0, U = 0 + 1·max(0, 0.8 − 1) = 0
    # turn 1: safe (0, 1) → μ = 0.5, Var = (0.25 + 0.25)/2 = 0.25, U = 0.25 + 1·0.3 = 0.55
    a0, a1 = 1 / (1 + math.exp(0.55)), math.exp(0.55) / (1 + math.exp(0.55))
    r0 = a0 * (0.5 * 0.5 + 1.0) + a1 * (0.5 * 1.0 + 0.0)  # = a0·1.25 + a1·0.5
    r1 = a0 * (0.5 * 1.0 + 1.0) + a1 * (0.5 * 0.0 + 1.0)  # = a0·1.5 + a1·1.0

    result = turn_aware_rewards(helpful, safe, config)

    np.testing.assert_allclose(result.mean, [1.0, 0.5])
    np.testing.assert_allclose(result.var, [0.0, 0.25])
    np.testing.assert_allclose(result.urgency, [0.0, 0.55])
    np.testing.assert_allclose(result.alpha, [a0, a1])
    np.testing.assert_allclose(result.rewards, [r0, r1])
    assert result.rewards[1] > result.rewards[0]  # the rollout that stayed safe at turn 1 wins


def test_three_by_three_by_hand() -> None:
    config = TurnAwareRewardConfig(lam=2.0, tau=0.6, beta=0.5)
    helpful = [[1.0, 0.5, 0.0], [0.2, 0.4, 0.6], [0.0, 1.0, 1.0]]
    safe = [[1.0, 0.0, 0.0], [1.0, 0.5, 0.0], [1.0, 1.0, 0.3]]
    # turn 0: (1, 1, 1)     μ = 1,   Var = 0,                         U = 0
    # turn 1: (0, .5, 1)    μ = 0.5, Var = (.25 + 0 + .25)/3 = 1/6,   U = 1/6 + 2·0.1 = 1/6 + 0.2
    # turn 2: (0, 0, .3)    μ = 0.1, Var = (.01 + .01 + .04)/3 = .02, U = 0.02 + 2·0.5 = 1.02
    urgency = [0.0, 1 / 6 + 0.2, 1.02]
    a = softmax(urgency)
    # β·help + safe per rollout and turn
    x = [
        [0.5 + 1.0, 0.25 + 0.0, 0.0 + 0.0],
        [0.1 + 1.0, 0.2 + 0.5, 0.3 + 0.0],
        [0.0 + 1.0, 0.5 + 1.0, 0.5 + 0.3],
    ]
    expected = [sum(a[t] * row[t] for t in range(3)) for row in x]

    result = turn_aware_rewards(helpful, safe, config)

    np.testing.assert_allclose(result.mean, [1.0, 0.5, 0.1])
    np.testing.assert_allclose(result.var, [0.0, 1 / 6, 0.02])
    np.testing.assert_allclose(result.urgency, urgency)
    np.testing.assert_allclose(result.alpha, a)
    np.testing.assert_allclose(result.rewards, expected)
    assert result.alpha.argmax() == 2  # the unsafe-on-average turn carries the most weight


def test_equal_urgency_gives_uniform_alpha() -> None:
    # every turn: safe (0, 1) → μ = 0.5, Var = 0.25, same U
    safe = [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    helpful = [[0.2, 0.4, 0.6], [0.0, 0.0, 0.0]]
    result = turn_aware_rewards(helpful, safe, TurnAwareRewardConfig(lam=3.0, tau=0.9, beta=1.0))
    np.testing.assert_allclose(result.alpha, [1 / 3] * 3)
    np.testing.assert_allclose(result.rewards, [(0.2 + 1.4 + 0.6) / 3, 2 / 3])


def test_single_rollout_has_zero_variance() -> None:
    config = TurnAwareRewardConfig(lam=1.0, tau=0.5, beta=1.0)
    result = turn_aware_rewards([[0.5, 0.5]], [[0.2, 0.9]], config)
    np.testing.assert_allclose(result.var, [0.0, 0.0])
    # U = (0 + 0.3, 0 + 0)
    a = softmax([0.3, 0.0])
    np.testing.assert_allclose(result.alpha, a)
    np.testing.assert_allclose(result.rewards, [a[0] * 0.7 + a[1] * 1.4])


def test_single_turn_has_alpha_one() -> None:
    result = turn_aware_rewards([[0.3], [0.9]], [[0.1], [0.6]], TurnAwareRewardConfig(beta=2.0))
    np.testing.assert_allclose(result.alpha, [1.0])
    np.testing.assert_allclose(result.rewards, [2 * 0.3 + 0.1, 2 * 0.9 + 0.6])


def test_all_safe_group_weights_only_disagreement() -> None:
    # μ = 1 ≥ τ everywhere, Var = 0 → U = 0 and α uniform whatever λ
    safe = np.ones((4, 3))
    helpful = np.array([[0.0, 0.5, 1.0]] * 4)
    config = TurnAwareRewardConfig(lam=50.0, tau=1.0, beta=0.5)
    result = turn_aware_rewards(helpful, safe, config)
    np.testing.assert_allclose(result.urgency, result.var)
    np.testing.assert_allclose(result.alpha, [1 / 3] * 3)
    np.testing.assert_allclose(result.rewards, [1.0 + 0.5 * 0.5] * 4)


def test_all_unsafe_group() -> None:
    # μ = 0, Var = 0 → U = λ·τ on every turn: uniform α; rewards come from helpfulness only
    safe = np.zeros((3, 2))
    helpful = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    result = turn_aware_rewards(helpful, safe, TurnAwareRewardConfig(lam=2.0, tau=0.5, beta=1.0))
    np.testing.assert_allclose(result.urgency, [1.0, 1.0])
    np.testing.assert_allclose(result.alpha, [0.5, 0.5])
    np.testing.assert_allclose(result.rewards, [0.5, 0.5, 0.0])


def test_large_urgency_is_stable() -> None:
    result = turn_aware_rewards(
        [[0.0, 0.0]], [[0.0, 1.0]], TurnAwareRewardConfig(lam=1e6, tau=1.0, beta=0.0)
    )
    assert np.isfinite(result.alpha).all()
    np.testing.assert_allclose(result.alpha, [1.0, 0.0])
    np.testing.assert_allclose(result.rewards, [0.0])


def test_missing_turns_are_scored_as_failures() -> None:
    config = TurnAwareRewardConfig(lam=1.0, tau=0.5, beta=0.5)
    nan = float("nan")
    helpful = [[1.0, 0.0, 0.0], [0.0, 1.0, nan], [0.5, nan, nan]]
    safe = [[1.0, 0.0, 0.2], [1.0, 1.0, nan], [0.0, nan, nan]]
    mask = np.array([[True, True, True], [True, True, False], [True, False, False]])
    # a missing turn is (help 0, safe 0) and stays in the group's statistics:
    # turn 0: (1, 1, 0)   μ = 2/3,  Var = (1/9 + 1/9 + 4/9)/3 = 2/9,   U = 2/9
    # turn 1: (0, 1, 0)   μ = 1/3,  Var = (1/9 + 4/9 + 1/9)/3 = 2/9,   U = 2/9 + 1/6
    # turn 2: (.2, 0, 0)  μ = 1/15, Var = (4/225 + 1/225 + 1/225)/3 = 2/225, U = 2/225 + 13/30
    a = softmax([2 / 9, 2 / 9 + 1 / 6, 2 / 225 + 13 / 30])
    r0 = a[0] * 1.5 + a[1] * 0.0 + a[2] * 0.2
    r1 = a[0] * 1.0 + a[1] * 1.5  # turn 2 never reached: scores 0, α not renormalised
    r2 = a[0] * 0.25

    result = turn_aware_rewards(helpful, safe, config, mask)

    np.testing.assert_allclose(result.mean, [2 / 3, 1 / 3, 1 / 15])
    np.testing.assert_allclose(result.var, [2 / 9, 2 / 9, 2 / 225])
    np.testing.assert_allclose(result.alpha, a)
    np.testing.assert_allclose(result.rewards, [r0, r1, r2])
    filled = turn_aware_rewards(
        np.nan_to_num(np.asarray(helpful)), np.nan_to_num(np.asarray(safe)), config
    )
    np.testing.assert_allclose(result.rewards, filled.rewards)


def test_full_mask_equals_no_mask() -> None:
    rng = np.random.default_rng(0)
    helpful, safe = rng.random((5, 4)), rng.random((5, 4))
    plain = turn_aware_rewards(helpful, safe)
    masked = turn_aware_rewards(helpful, safe, mask=np.ones((5, 4), dtype=bool))
    np.testing.assert_allclose(masked.rewards, plain.rewards)
    np.testing.assert_allclose(masked.alpha, plain.alpha)


def test_a_turn_no_rollout_reached_is_a_failure_for_all() -> None:
    mask = np.array([[True, False], [True, False]])
    config = TurnAwareRewardConfig(lam=1.0, tau=0.5, beta=0.5)
    result = turn_aware_rewards([[0.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]], config, mask)
    # turn 0: (1, 0) μ = 0.5, Var = 0.25, U = 0.25; turn 1: (0, 0) μ = 0, Var = 0, U = λτ = 0.5
    a = softmax([0.25, 0.5])
    np.testing.assert_allclose(result.alpha, a)
    np.testing.assert_allclose(result.urgency, [0.25, 0.5])
    np.testing.assert_allclose(result.rewards, [a[0] * 1.0, a[0] * 0.5])


def test_per_completion_baseline_uses_the_final_turn() -> None:
    config = TurnAwareRewardConfig(beta=0.5)
    helpful = [[1.0, 0.2], [0.4, 0.0]]
    safe = [[0.0, 1.0], [1.0, 0.3]]
    np.testing.assert_allclose(
        per_completion_rewards(helpful, safe, config), [0.1 + 1.0, 0.0 + 0.3]
    )
    mask = np.array([[True, True], [True, False]])
    np.testing.assert_allclose(  # rollout 1 never reached the final turn: a failure
        per_completion_rewards(helpful, safe, config, mask), [0.1 + 1.0, 0.0]
    )


@pytest.mark.parametrize(
    ("helpful", "safe", "mask", "message"),
    [
        ([[0.5, 0.5]], [[0.5], [0.5]], None, "differ in shape"),
        ([0.5, 0.5], [0.5, 0.5], None, "2-D"),
        (np.zeros((0, 2)), np.zeros((0, 2)), None, "at least one rollout"),
        (np.zeros((2, 0)), np.zeros((2, 0)), None, "at least one rollout"),
        ([[0.5, 0.5], [0.5, 0.5]], [[0.5, 0.5], [0.5, float("nan")]], None, "rollout 1, turn 1"),
        ([[0.5, 1.2]], [[0.5, 0.5]], None, "help score of rollout 0, turn 1"),
        ([[0.5, 0.5]], [[-0.1, 0.5]], None, "safe score of rollout 0, turn 0"),
        ([[0.5, 0.5]], [[0.5, 0.5]], np.array([[1, 0]]), "boolean"),
        ([[0.5, 0.5]], [[0.5, 0.5]], np.array([True, False]), "mask shape"),
        ([[0.5], [0.5]], [[0.5], [0.5]], np.array([[True], [False]]), "rollout 1 has no turn"),
    ],
)
def test_bad_inputs_are_named(helpful: object, safe: object, mask: object, message: str) -> None:
    with pytest.raises(RewardInputError, match=message):
        turn_aware_rewards(helpful, safe, mask=mask)  # type: ignore[arg-type]


def test_masked_out_values_are_not_checked() -> None:
    mask = np.array([[True, False]])
    config = TurnAwareRewardConfig(lam=1.0, tau=0.5, beta=0.5)
    result = turn_aware_rewards([[0.5, float("nan")]], [[0.5, 7.0]], config, mask)
    a = softmax([0.0, 0.5])  # turn 1 is missing: safe 0 → U = λτ
    np.testing.assert_allclose(result.rewards, [a[0] * (0.5 * 0.5 + 0.5)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": -0.1}, "lam must be >= 0"),
        ({"tau": 1.5}, r"tau must be in \[0, 1\]"),
        ({"beta": -1.0}, "beta must be >= 0"),
        ({"lam": float("inf")}, "lam must be finite"),
        ({"tau": True}, "tau must be a number"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TurnAwareRewardConfig(**kwargs)


@st.composite
def groups(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 8))
    t = draw(st.integers(1, 6))
    unit = st.floats(0.0, 1.0, allow_nan=False)
    return draw(arrays(np.float64, (n, t), elements=unit)), draw(
        arrays(np.float64, (n, t), elements=unit)
    )


configs = st.builds(
    TurnAwareRewardConfig,
    lam=st.floats(0.0, 10.0),
    tau=st.floats(0.0, 1.0),
    beta=st.floats(0.0, 2.0),
)


@settings(max_examples=60, deadline=None)
@given(groups(), configs, st.randoms(use_true_random=False))
def test_permuting_rollouts_permutes_rewards(
    group: tuple[np.ndarray, np.ndarray], config: TurnAwareRewardConfig, rnd: random.Random
) -> None:
    helpful, safe = group
    order = list(range(len(helpful)))
    rnd.shuffle(order)
    base = turn_aware_rewards(helpful, safe, config)
    permuted = turn_aware_rewards(helpful[order], safe[order], config)
    np.testing.assert_allclose(permuted.rewards, base.rewards[order], atol=1e-12)
    np.testing.assert_allclose(permuted.alpha, base.alpha, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(groups(), configs)
def test_alpha_is_a_distribution(
    group: tuple[np.ndarray, np.ndarray], config: TurnAwareRewardConfig
) -> None:
    helpful, safe = group
    result = turn_aware_rewards(helpful, safe, config)
    assert math.isclose(result.alpha.sum(), 1.0, rel_tol=1e-12)
    assert (result.alpha >= 0).all()
    # each reward is a convex combination of the rollout's own turn scores
    x = config.beta * helpful + safe
    assert (result.rewards >= x.min(axis=1) - 1e-12).all()
    assert (result.rewards <= x.max(axis=1) + 1e-12).all()


@settings(max_examples=60, deadline=None)
@given(groups(), st.floats(0.0, 1.0), st.floats(0.0, 5.0), st.floats(0.0, 5.0))
def test_larger_lambda_moves_alpha_to_unsafe_turns(
    group: tuple[np.ndarray, np.ndarray], tau: float, lam: float, extra: float
) -> None:
    helpful, safe = group
    low = turn_aware_rewards(helpful, safe, TurnAwareRewardConfig(lam=lam, tau=tau))
    high = turn_aware_rewards(helpful, safe, TurnAwareRewardConfig(lam=lam + extra, tau=tau))
    unsafe = low.mean < tau
    assert high.alpha[unsafe].sum() >= low.alpha[unsafe].sum() - 1e-12


def test_larger_lambda_strictly_moves_alpha() -> None:
    safe = [[0.2, 1.0], [0.4, 1.0]]  # μ = (0.3, 1.0), τ = 0.5: only turn 0 is below τ
    helpful = [[0.0, 0.0], [0.0, 0.0]]
    alphas = [
        turn_aware_rewards(helpful, safe, TurnAwareRewardConfig(lam=lam, tau=0.5)).alpha[0]
        for lam in (0.0, 1.0, 5.0)
    ]
    assert alphas[0] < alphas[1] < alphas[2]


def scripted(prompt: str, completion: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A score_fn whose completion is its own per-turn (help, safe) list."""
    return completion


def test_trl_reward_groups_consecutive_prompts() -> None:
    config = TurnAwareRewardConfig(lam=1.0, tau=0.8, beta=0.5)
    first = [[(0.5, 1.0), (1.0, 0.0)], [(1.0, 1.0), (0.0, 1.0)]]  # the 2×2 group above
    second = [[(0.3, 0.1)], [(0.9, 0.6)], [(0.0, 0.0)]]
    reward = make_turn_aware_reward(scripted, config)

    rewards = reward(["a", "a", "b", "b", "b"], [*first, *second])

    expected_first = turn_aware_rewards([[0.5, 1.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 1.0]], config)
    np.testing.assert_allclose(rewards[:2], expected_first.rewards)
    np.testing.assert_allclose(rewards[2:], [0.5 * 0.3 + 0.1, 0.5 * 0.9 + 0.6, 0.0])
    assert all(type(r) is float for r in rewards)
    assert len(reward.last_groups) == 2
    np.testing.assert_allclose(reward.last_groups[0].alpha, expected_first.alpha)
    np.testing.assert_allclose(reward.last_groups[1].alpha, [1.0])
    assert reward.__name__ == "turn_aware_reward"


def test_trl_reward_scores_missing_turns_of_rollouts_that_ended_early() -> None:
    completions = [[(1.0, 1.0), (0.0, 0.0), (0.0, 0.2)], [(0.0, 1.0), (1.0, 1.0)], [(0.5, 0.0)]]
    config = TurnAwareRewardConfig(lam=1.0, tau=0.5, beta=0.5)
    reward = make_turn_aware_reward(scripted, config)
    rewards = reward(["q"] * 3, completions)
    nan = float("nan")
    helpful = [[1.0, 0.0, 0.0], [0.0, 1.0, nan], [0.5, nan, nan]]
    safe = [[1.0, 0.0, 0.2], [1.0, 1.0, nan], [0.0, nan, nan]]
    mask = ~np.isnan(np.asarray(helpful))
    np.testing.assert_allclose(rewards, turn_aware_rewards(helpful, safe, config, mask).rewards)


def test_trl_reward_passes_row_columns_and_accepts_turn_scores() -> None:
    seen: list[tuple[str, str]] = []

    def judge(prompt: str, completion: str, seed: str) -> list[TurnScores]:
        seen.append((completion, seed))
        return [TurnScores(helpfulness=0.5, harmlessness=1.0 if completion == "no" else 0.0)]

    reward = make_turn_aware_reward(judge, TurnAwareRewardConfig(beta=1.0))
    rewards = reward(
        ["p", "p"], ["no", "sure"], seed=["s1", "s2"], trainer_state=object(), completion_ids=[1]
    )
    assert rewards == [1.5, 0.5]
    assert seen == [("no", "s1"), ("sure", "s2")]


def test_trl_reward_num_generations_splits_and_checks_groups() -> None:
    reward = make_turn_aware_reward(scripted, num_generations=2)
    completions = [[(0.0, 1.0)], [(0.0, 0.0)], [(0.0, 0.0)], [(0.0, 0.0)]]
    rewards = reward(["same"] * 4, completions)  # two adjacent rows with one prompt
    assert len(reward.last_groups) == 2
    np.testing.assert_allclose(reward.last_groups[1].var, [0.0])
    np.testing.assert_allclose(rewards, [1.0, 0.0, 0.0, 0.0])
    with pytest.raises(RewardInputError, match="multiple of num_generations=2"):
        reward(["x", "x", "x"], completions[:3])


def test_trl_reward_rejects_misaligned_calls() -> None:
    reward = make_turn_aware_reward(scripted)
    with pytest.raises(RewardInputError, match="2 prompts but 1 completions"):
        reward(["a", "a"], [[(0.0, 0.0)]])
    with pytest.raises(RewardInputError, match="no turns for completion 1"):
        reward(["a", "a"], [[(0.0, 0.0)], []])
    assert reward([], []) == []


def test_per_completion_trl_reward_and_pickling() -> None:
    baseline = make_per_completion_reward(scripted, TurnAwareRewardConfig(beta=0.5))
    rewards = baseline(["a", "a"], [[(1.0, 0.0), (0.2, 1.0)], [(0.4, 1.0)]])
    np.testing.assert_allclose(rewards, [0.1 + 1.0, 0.0])  # the second never reached turn 2
    assert baseline.__name__ == "per_completion_reward"
    restored = pickle.loads(pickle.dumps(make_turn_aware_reward(scripted)))
    assert restored(["a"], [[(1.0, 1.0)]]) == [1.0 + TurnAwareRewardConfig().beta]
