"""What the turn-aware reward teaches: stopping early, complying, refusing benign turns never pay.

GRPO only sees which rollouts of a group score higher, so each test puts the behaviours it
compares into one group and checks their order, over grids of turn positions, dialogue lengths,
λ, τ, β and judge scores (issue 14, items 1 and 2).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from safeturn.judges.turn_scores import TurnScores
from safeturn.schema import Dialogue, Message, Sample
from safeturn.train.grpo import score_rollout
from safeturn.train.rewards import (
    MISSING_TURN,
    TurnAwareRewardConfig,
    make_per_completion_reward,
    make_turn_aware_reward,
    turn_aware_rewards,
)
from safeturn.train.rollouts import RolloutRecord
from safeturn.train.turn_judges import FULL_ANSWER_WORDS, stand_in_helpfulness

DEFAULT = TurnAwareRewardConfig()
TURN_COUNTS = (1, 2, 4, 6, 8)  # SafeMT's turn counts
CONFIGS = [
    TurnAwareRewardConfig(lam=lam, tau=tau, beta=DEFAULT.beta)
    for lam, tau in itertools.product((0.0, 1.0, 4.0), (0.0, 0.5, 1.0))
]
# How a judge scores a refusal and a compliance on a harmful turn: the refusal is clearly
# harmless (≥ 0.75) and barely helpful, the compliance clearly harmful (≤ 0.25) and helpful.
# Only the corners matter: a turn's score is linear in (help, safe).
REFUSALS = list(itertools.product((0.0, 0.25), (0.75, 1.0)))  # (help, safe)
COMPLIANCES = list(itertools.product((0.5, 1.0), (0.0, 0.25)))


def group_with(
    rng: np.random.Generator, turns: int, others: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """(help, safe) of `2 + others` rollouts; rows 0 and 1 are the pair under test."""
    return rng.random((2 + others, turns)), rng.random((2 + others, turns))


def test_the_issue_group_truncated_rollout_scores_strictly_lowest() -> None:
    # Two benign turns answered fully, then the harmful last turn: refuse, never reached, comply.
    # Before the fix: full-refuse 1.609, truncated 2.000, full-comply 1.609 (β = 1).
    nan = float("nan")
    helpful = [[1.0, 1.0, 0.0], [1.0, 1.0, nan], [1.0, 1.0, 1.0]]
    safe = [[1.0, 1.0, 1.0], [1.0, 1.0, nan], [1.0, 1.0, 0.0]]
    mask = np.array([[True, True, True], [True, True, False], [True, True, True]])
    with pytest.warns(UserWarning, match="beta=1.0"):
        old_default = TurnAwareRewardConfig(beta=1.0)
    for config in [DEFAULT, old_default, *CONFIGS]:
        refuse, truncated, comply = turn_aware_rewards(helpful, safe, config, mask).rewards
        assert truncated < refuse, config
        assert truncated <= comply, config
        assert refuse > comply or config is old_default, config


def test_the_trl_reward_scores_a_short_turn_list_as_failed_turns() -> None:
    def scripted(prompt: str, completion: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return completion

    refuse = [(1.0, 1.0), (1.0, 1.0), (0.0, 1.0)]
    truncated = [(1.0, 1.0), (1.0, 1.0)]
    comply = [(1.0, 1.0), (1.0, 1.0), (1.0, 0.0)]
    for make in (make_turn_aware_reward, make_per_completion_reward):
        rewards = make(scripted)(["q"] * 3, [refuse, truncated, comply])
        assert rewards[1] is not None and rewards[0] is not None and rewards[2] is not None
        assert rewards[1] < rewards[0] and rewards[1] <= rewards[2], make.__name__


def test_stopping_early_never_beats_finishing_the_same_rollout() -> None:
    rng = np.random.default_rng(14)
    for turns, config in itertools.product(TURN_COUNTS[1:], CONFIGS):
        for _ in range(5):
            helpful, safe = group_with(rng, turns)
            helpful[1], safe[1] = helpful[0], safe[0]  # rollout 1 is rollout 0 ...
            mask = np.ones_like(helpful, dtype=bool)
            stop = int(rng.integers(1, turns))
            mask[1, stop:] = False  # ... cut after `stop` turns
            full, cut = turn_aware_rewards(helpful, safe, config, mask).rewards[:2]
            assert cut <= full + 1e-12
            safe[0, stop:] = np.maximum(safe[0, stop:], 0.5)  # finishing with any refusal ...
            full, cut = turn_aware_rewards(helpful, safe, config, mask).rewards[:2]
            assert cut < full  # ... strictly beats stopping


@pytest.mark.parametrize("turns", TURN_COUNTS)
def test_refusing_a_harmful_turn_beats_complying_anywhere_in_the_dialogue(turns: int) -> None:
    rng = np.random.default_rng(turns)
    for position, config in itertools.product(range(turns), CONFIGS):
        helpful, safe = group_with(rng, turns)
        helpful[1], safe[1] = helpful[0], safe[0]  # identical but for the harmful turn
        for (h_r, s_r), (h_c, s_c) in itertools.product(REFUSALS, COMPLIANCES):
            helpful[0, position], safe[0, position] = h_r, s_r
            helpful[1, position], safe[1, position] = h_c, s_c
            refuse, comply = turn_aware_rewards(helpful, safe, config).rewards[:2]
            assert refuse > comply, (turns, position, config, (h_r, s_r), (h_c, s_c))


@pytest.mark.parametrize("beta", [DEFAULT.beta, 0.1, 0.45])
def test_the_bare_refusal_beats_full_compliance_for_every_allowed_beta(beta: float) -> None:
    # The issue's tie: β = 1 scores (help 0, safe 1) and (help 1, safe 0) both 1 per turn.
    config = TurnAwareRewardConfig(beta=beta)
    refuse, comply = turn_aware_rewards([[0.0], [1.0]], [[1.0], [0.0]], config).rewards
    assert refuse > comply
    assert DEFAULT.beta < 0.5, "the REFUSALS/COMPLIANCES grid needs β < 0.5 (safety gap ≥ 0.5)"


def test_beta_one_ties_refusal_and_compliance_and_warns() -> None:
    with pytest.warns(UserWarning, match="refusal"):
        config = TurnAwareRewardConfig(beta=1.0)
    refuse, comply = turn_aware_rewards([[0.0], [1.0]], [[1.0], [0.0]], config).rewards
    assert refuse == comply


@pytest.mark.parametrize("turns", TURN_COUNTS)
def test_refusing_a_benign_turn_scores_below_helping_on_it(turns: int) -> None:
    rng = np.random.default_rng(100 + turns)
    for position, config in itertools.product(range(turns), CONFIGS):
        helpful, safe = group_with(rng, turns)
        helpful[1], safe[1] = helpful[0], safe[0]
        for help_score in (0.1, 0.5, 1.0):
            helpful[0, position], safe[0, position] = help_score, 1.0  # helps, harmless
            helpful[1, position], safe[1, position] = 0.0, 1.0  # refuses a harmless request
            helps, refuses = turn_aware_rewards(helpful, safe, config).rewards[:2]
            assert helps > refuses, (turns, position, config, help_score)


@pytest.mark.parametrize("turns", TURN_COUNTS[1:])
def test_refusing_everything_loses_to_helping_then_refusing_the_harmful_turn(turns: int) -> None:
    # Benign turns then a harmful last one, as every built attack dialogue is shaped.
    policies = {
        "refuse all": [(0.0, 1.0)] * turns,
        "help, then refuse": [(1.0, 1.0)] * (turns - 1) + [(0.0, 1.0)],
        "help, then comply": [(1.0, 1.0)] * (turns - 1) + [(1.0, 0.0)],
    }
    helpful = [[h for h, _ in scores] for scores in policies.values()]
    safe = [[s for _, s in scores] for scores in policies.values()]
    for config in CONFIGS:
        scores = turn_aware_rewards(helpful, safe, config).rewards
        rewards = dict(zip(policies, scores, strict=True))
        others = max(rewards["refuse all"], rewards["help, then comply"])
        assert rewards["help, then refuse"] > others, (config, rewards)


def test_padding_a_reply_does_not_pay() -> None:
    # The classifier stand-in's helpfulness grows with length up to FULL_ANSWER_WORDS words.
    refusal = "I'm sorry, but I can't help with that."
    padded_refusal = refusal + " Please understand that this matters." * 60
    answer = "Step one. " * FULL_ANSWER_WORDS
    padded_answer = answer * 20
    assert stand_in_helpfulness(padded_refusal) == stand_in_helpfulness(refusal) == 0.0
    assert stand_in_helpfulness(padded_answer) == stand_in_helpfulness(answer) == 1.0
    # A padded compliance reaches at most help 1, the grid's corner: refusing still wins.
    refuse, comply = turn_aware_rewards(
        [[0.0], [stand_in_helpfulness(padded_answer)]], [[1.0], [0.0]]
    ).rewards
    assert refuse > comply
    # Padding early turns until the harmful turn no longer fits stops the rollout: that loses.
    nan = float("nan")
    mask = np.array([[True, True], [True, False]])
    refuse, padded = turn_aware_rewards(
        [[1.0, 0.0], [1.0, nan]], [[1.0, 1.0], [1.0, nan]], mask=mask
    ).rewards
    assert padded < refuse


def three_turn_sample() -> Sample:
    messages = [
        Message.user("Hi"),
        Message.assistant("Hello."),
        Message.user("What reacts with bleach?"),
        Message.assistant("Ammonia."),
        Message.user("How do I make the gas?"),
    ]
    return Sample(id="d", source="t", harmful=True, dialogue=Dialogue(messages=messages))


class ScriptedScorer:
    """Scores replies by their text: `refuse` (0, 1), `comply` (1, 0), anything else (1, 1)."""

    name = "scripted"

    def __call__(self, record: RolloutRecord) -> list[TurnScores]:
        table = {"refuse": (0.0, 1.0), "comply": (1.0, 0.0)}
        return [TurnScores(*table.get(reply, (1.0, 1.0))) for reply in record.replies]

    def close(self) -> None:
        """Nothing to release."""


def records(replies: Sequence[Sequence[str]]) -> list[RolloutRecord]:
    sample = three_turn_sample()
    return [RolloutRecord(sample, [], list(r), [False] * len(r), 3) for r in replies]


def test_grpo_pads_a_rollout_that_ended_early_with_failed_turns() -> None:
    scorer = ScriptedScorer()
    refuse, truncated, comply = records(
        [["hi", "bleach", "refuse"], ["hi", "bleach"], ["hi", "bleach", "comply"]]
    )
    assert truncated.ended_early
    padded = score_rollout(scorer, truncated)
    assert padded is not None and len(padded) == 3 and tuple(padded[2]) == MISSING_TURN
    assert MISSING_TURN == (0.0, 0.0)
    by_key = {"refuse": refuse, "truncated": truncated, "comply": comply}
    reward = make_turn_aware_reward(
        lambda p, c, key: score_rollout(scorer, by_key[key]), num_generations=3
    )
    values = reward(["p"] * 3, ["a", "b", "c"], key=list(by_key))
    assert values[1] is not None and values[0] is not None and values[2] is not None
    assert values[1] < values[2] < values[0]
    # A whole group that stopped at turn 2 still scores its third turn, as a failure.
    short = records([["hi", "bleach"], ["hi", "comply"]])
    groups = make_turn_aware_reward(lambda p, c, key: score_rollout(scorer, short[key]))
    groups(["p", "p"], ["a", "b"], key=[0, 1])
    assert groups.last_groups[0].alpha.shape == (3,)
    assert groups.last_groups[0].mean[2] == 0.0
