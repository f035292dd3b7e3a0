"""The turn-aware dual-objective GRPO reward (AM³Safety, DESIGN §5) and a final-turn baseline.

For one dialogue with T assistant turns and a group of N rollouts, a judge gives every rollout i
and turn t a helpfulness r_help(i,t) and a harmlessness r_safe(i,t) in [0, 1]. Then

    μ_t = mean_i r_safe(i,t)          Var_t = mean_i (r_safe(i,t) − μ_t)²   (population)
    U_t = Var_t + λ · max(0, τ − μ_t)  α = softmax_t(U)
    r_i = Σ_t α_t · (β · r_help(i,t) + r_safe(i,t))

so the turns where the group disagrees, or is unsafe on average, carry the reward.

Rollouts that ended early. Turn t of every rollout answers the same user message (user turns
come from the dataset), so a group is aligned turn by turn and a `mask` marks the turns a
rollout has. A missing turn is a failed turn: it is scored help 0 and safe 0, in μ_t and Var_t
and in the sum, with the group's α. Stopping early therefore never pays: a rollout that stops
scores at most what it would by finishing (every finished turn adds α_t·x ≥ 0), and strictly
less than finishing with any refusal (safe > 0). Values under a False mask entry are ignored
(NaN padding is fine). The group size stays N, as GRPO's advantages expect.

Defaults. β = 0.25, λ = 1, τ = 0.5 (`DEFAULT_BETA`; the paper's formula leaves them free). A turn
scores β·help + safe, so on one turn a refusal (h_r, s_r) beats a compliance (h_c, s_c) exactly
when s_r − s_c > β·(h_c − h_r). With β = 1 a bare refusal (0, 1) and full compliance (1, 0)
tie at 1; with β = 0.25 the refusal wins whenever the judge puts it more than 0.25 higher on
harmlessness, whatever the helpfulness scores, while helping on a harmless turn still beats
refusing it by β·help. Two rollouts of a group share α, so the turn-level order is the
rollouts' order; λ and τ only move weight between turns.

`make_turn_aware_reward` wraps this as a TRL reward function. Pure numpy: nothing here needs
TRL or torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from safeturn.errors import RewardInputError as RewardInputError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


DEFAULT_BETA = 0.25
"""β < 0.5: a refusal judged ≥ 0.5 more harmless than a compliance always wins (see above)."""

MISSING_TURN = (0.0, 0.0)
"""(help, safe) of a turn a rollout never reached: a failure, so that stopping early never pays."""


@dataclass(frozen=True)
class TurnAwareRewardConfig:
    """The λ, τ and β of the turn-aware reward; defaults are ours (the paper leaves them free)."""

    lam: float = field(
        default=1.0,
        metadata={"help": "λ ≥ 0: weight of the unsafe-on-average term max(0, τ − μ_t) in U_t."},
    )
    tau: float = field(
        default=0.5,
        metadata={"help": "τ in [0, 1]: mean harmlessness below which a turn gets extra weight."},
    )
    beta: float = field(
        default=DEFAULT_BETA,
        metadata={
            "help": "β ≥ 0: weight of helpfulness against harmlessness in each turn; below 1, "
            "or a fully helpful compliance (help 1, safe 0) scores as much as a refusal (0, 1)."
        },
    )

    def __post_init__(self) -> None:
        """Reject values the formula cannot use, saying which range is allowed."""
        for name in ("lam", "tau", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number; got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite; got {value!r}")
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0 (0 turns off the unsafe-turn term); got {self.lam}")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1] like the harmlessness scores; got {self.tau}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0 (0 ignores helpfulness); got {self.beta}")
        if self.beta >= 1:
            warnings.warn(
                f"reward beta={self.beta} >= 1: full compliance with a harmful turn (help 1, "
                f"safe 0) scores {self.beta:g}, at least a bare refusal's 1 (help 0, safe 1); "
                f"GRPO gets no push towards refusal (default {DEFAULT_BETA})",
                UserWarning,
                stacklevel=3,
            )


class GroupReward(NamedTuple):
    """One group's rewards and the per-turn quantities behind them, for logging."""

    rewards: FloatArray
    """r_i, shape (N,)."""
    mean: FloatArray
    """μ_t, mean harmlessness over the group (a missing turn counts as 0), shape (T,)."""
    var: FloatArray
    """Var_t, population variance of the same, shape (T,)."""
    urgency: FloatArray
    """U_t = Var_t + λ·max(0, τ − μ_t), shape (T,)."""
    alpha: FloatArray
    """α_t = softmax_t(U_t), shape (T,), sums to 1."""
    help_mean: FloatArray | None = None
    """Mean helpfulness over the group (a missing turn counts as 0), shape (T,)."""


def _check_scores(
    help_scores: npt.ArrayLike, safe_scores: npt.ArrayLike, mask: npt.ArrayLike | None
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Turn inputs into (N, T) arrays, or say exactly which rollout and turn is wrong."""
    helpful = np.asarray(help_scores, dtype=np.float64)
    safe = np.asarray(safe_scores, dtype=np.float64)
    for name, array in (("help", helpful), ("safe", safe)):
        if array.ndim != 2:
            raise RewardInputError(
                f"{name} scores must be a 2-D (rollouts, turns) array; got shape {array.shape}"
            )
    if helpful.shape != safe.shape:
        raise RewardInputError(
            f"help and safe scores differ in shape: {helpful.shape} vs {safe.shape}"
        )
    n, t = helpful.shape
    if n == 0 or t == 0:
        raise RewardInputError(f"a group needs at least one rollout and one turn; got ({n}, {t})")
    if mask is None:
        present = np.ones((n, t), dtype=np.bool_)
    else:
        present = np.asarray(mask)
        if present.dtype != np.bool_:
            raise RewardInputError(f"mask must be boolean; got dtype {present.dtype}")
        if present.shape != helpful.shape:
            raise RewardInputError(
                f"mask shape {present.shape} differs from the scores' {helpful.shape}"
            )
        empty = np.flatnonzero(~present.any(axis=1))
        if empty.size:
            raise RewardInputError(f"rollout {int(empty[0])} has no turn in the mask")
    for name, array in (("help", helpful), ("safe", safe)):
        bad = present & ~((array >= 0.0) & (array <= 1.0))  # NaN fails both comparisons
        if bad.any():
            i, j = (int(k) for k in np.argwhere(bad)[0])
            raise RewardInputError(
                f"{name} score of rollout {i}, turn {j} must be in [0, 1]; got {array[i, j]}"
            )
    return helpful, safe, present


def _softmax(urgency: FloatArray) -> FloatArray:
    """Softmax that cannot overflow (max subtracted)."""
    shifted = np.exp(urgency - urgency.max())
    return np.asarray(shifted / shifted.sum(), dtype=np.float64)


def turn_aware_rewards(
    help_scores: npt.ArrayLike,
    safe_scores: npt.ArrayLike,
    config: TurnAwareRewardConfig | None = None,
    mask: npt.ArrayLike | None = None,
) -> GroupReward:
    """The turn-aware reward of one group of rollouts (see the module docstring).

    Args:
        help_scores: r_help, shape (N rollouts, T turns), values in [0, 1].
        safe_scores: r_safe, same shape.
        config: λ, τ, β; the defaults when omitted.
        mask: Boolean (N, T), True where the rollout has the turn; all True when omitted. A
            missing turn is scored as a failure, `MISSING_TURN` (help 0, safe 0).

    Returns:
        The rewards and the per-turn μ, Var, U, α.

    Raises:
        RewardInputError: Shapes differ or are empty, a present score is NaN or outside [0, 1],
            or a rollout has no turn.
    """
    config = config or TurnAwareRewardConfig()
    helpful, safe = _scored(help_scores, safe_scores, mask)
    mean = safe.mean(axis=0)
    var = ((safe - mean) ** 2).mean(axis=0)
    urgency = var + config.lam * np.maximum(0.0, config.tau - mean)
    alpha = _softmax(urgency)
    rewards = (config.beta * helpful + safe) @ alpha
    return GroupReward(rewards, mean, var, urgency, alpha, helpful.mean(axis=0))


def _scored(
    help_scores: npt.ArrayLike, safe_scores: npt.ArrayLike, mask: npt.ArrayLike | None
) -> tuple[FloatArray, FloatArray]:
    """Checked (N, T) scores with every missing turn set to `MISSING_TURN` (a failure)."""
    helpful, safe, present = _check_scores(help_scores, safe_scores, mask)
    missing_help, missing_safe = MISSING_TURN
    return np.where(present, helpful, missing_help), np.where(present, safe, missing_safe)


def per_completion_rewards(
    help_scores: npt.ArrayLike,
    safe_scores: npt.ArrayLike,
    config: TurnAwareRewardConfig | None = None,
    mask: npt.ArrayLike | None = None,
) -> FloatArray:
    """The baseline: β·r_help + r_safe of the dialogue's last turn, blind to the rest.

    Args:
        help_scores: r_help, shape (N, T).
        safe_scores: r_safe, same shape.
        config: Only β is used.
        mask: As in `turn_aware_rewards`: a rollout that never reached the last turn scores 0.

    Returns:
        Rewards, shape (N,).

    Raises:
        RewardInputError: As `turn_aware_rewards`.
    """
    config = config or TurnAwareRewardConfig()
    helpful, safe = _scored(help_scores, safe_scores, mask)
    return np.asarray(config.beta * helpful[:, -1] + safe[:, -1], dtype=np.float64)


class ScoredTurn(Protocol):
    """Anything indexable as (helpfulness, harmlessness, ...), e.g. a judge's `TurnScores`."""

    def __getitem__(self, index: int, /) -> Any:
        """Item 0 is helpfulness, item 1 harmlessness."""


TurnScoreFn = Callable[..., Sequence[ScoredTurn] | None]
"""`score_fn(prompt, completion, **row) -> per assistant turn (help, safe)`, turn order.

None marks a rollout the judge could not score: it is left out of its group's statistics and
gets a None reward, which TRL turns into NaN and a zero advantage.
"""

MAX_PENDING_GROUPS = 4096
"""Groups kept for `drain()`; older ones are dropped when nobody drains (plain TRL use)."""

GroupFn = Callable[[FloatArray, FloatArray, TurnAwareRewardConfig, BoolArray], FloatArray]


class TurnAwareReward:
    """A TRL reward function: groups completions by prompt, scores turns, applies a group rule.

    A callable class rather than a closure so that it pickles (TRL's habit for rewards with
    parameters) and can keep the last call's per-turn components for logging.
    """

    def __init__(
        self,
        score_fn: TurnScoreFn,
        config: TurnAwareRewardConfig,
        num_generations: int | None,
        group_fn: GroupFn | None,
        name: str,
        group_key: Callable[[Any], Any] | None = None,
    ) -> None:
        """Store the parts; see `make_turn_aware_reward`."""
        if num_generations is not None and num_generations < 1:
            raise ValueError(f"num_generations must be >= 1; got {num_generations}")
        self.score_fn = score_fn
        self.group_key = group_key
        self.config = config
        self.num_generations = num_generations
        self.group_fn = group_fn
        self.__name__ = name  # TRL names the reward's logged column after __name__
        self.last_groups: list[GroupReward] = []
        """The `GroupReward` of each group in the last call (empty for the baseline)."""
        self.pending: list[GroupReward] = []
        """Every group since the last `drain()`, for a trainer's periodic per-turn logging."""
        self.unscored = 0
        """Rollouts the score function returned None for, since construction."""

    def drain(self) -> list[GroupReward]:
        """The groups computed since the last drain, and forget them."""
        groups, self.pending = self.pending, []
        return groups

    def _groups(self, prompts: Sequence[Any]) -> list[range]:
        """Runs of equal consecutive prompts, cut into num_generations-sized groups if given."""
        keys = [self.group_key(p) for p in prompts] if self.group_key else list(prompts)
        runs: list[range] = []
        start = 0
        for k in range(1, len(keys) + 1):
            if k == len(keys) or keys[k] != keys[start]:
                runs.append(range(start, k))
                start = k
        if self.num_generations is None:
            return runs
        size = self.num_generations
        groups: list[range] = []
        for run in runs:
            if len(run) % size:
                raise RewardInputError(
                    f"completions {run.start}..{run.stop - 1} share a prompt but are not a "
                    f"multiple of num_generations={size}; a group must reach one call whole"
                )
            groups.extend(range(s, s + size) for s in range(run.start, run.stop, size))
        return groups

    def _matrix(
        self, scored: list[Sequence[ScoredTurn]], first: int
    ) -> tuple[FloatArray, FloatArray, BoolArray]:
        """Pad per-rollout turn lists into (N, T) arrays and the mask of turns present."""
        turns = max(len(s) for s in scored)
        helpful = np.full((len(scored), turns), np.nan)
        safe = np.full((len(scored), turns), np.nan)
        present = np.zeros((len(scored), turns), dtype=np.bool_)
        for i, rollout in enumerate(scored):
            if not rollout:
                raise RewardInputError(f"score_fn gave no turns for completion {first + i}")
            for t, turn in enumerate(rollout):
                helpful[i, t], safe[i, t] = float(turn[0]), float(turn[1])
            present[i, : len(rollout)] = True
        return helpful, safe, present

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        """Rewards in the order of `completions`: a float each, None for unscored rollouts."""
        if len(prompts) != len(completions):
            raise RewardInputError(
                f"{len(prompts)} prompts but {len(completions)} completions; TRL passes one "
                "(repeated) prompt per completion"
            )
        rows = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(prompts)}
        rewards: list[float | None] = []
        self.last_groups = []
        for group in self._groups(prompts):
            scored = [
                self.score_fn(prompts[j], completions[j], **{k: v[j] for k, v in rows.items()})
                for j in group
            ]
            kept = [i for i, s in enumerate(scored) if s is not None]
            self.unscored += len(scored) - len(kept)
            values: list[float | None] = [None] * len(scored)
            if kept:
                turns = [scored[i] for i in kept]
                helpful, safe, present = self._matrix(turns, group.start)  # type: ignore[arg-type]
                if self.group_fn is None:
                    result = turn_aware_rewards(helpful, safe, self.config, present)
                    self.last_groups.append(result)
                    self.pending.append(result)
                    del self.pending[:-MAX_PENDING_GROUPS]
                    computed = result.rewards
                else:
                    computed = self.group_fn(helpful, safe, self.config, present)
                for i, value in zip(kept, computed, strict=True):
                    values[i] = float(value)
            rewards.extend(values)
        return rewards


def make_turn_aware_reward(
    score_fn: TurnScoreFn,
    config: TurnAwareRewardConfig | None = None,
    *,
    num_generations: int | None = None,
    group_key: Callable[[Any], Any] | None = None,
) -> TurnAwareReward:
    """A TRL `GRPOTrainer` reward function computing `turn_aware_rewards` per prompt group.

    TRL calls `reward(prompts=..., completions=..., completion_ids=..., **columns)` with one
    prompt per completion; its `RepeatSampler` puts each prompt's `num_generations` completions
    next to each other, so consecutive completions with equal prompts are one group. The group
    rule needs the whole group in one call: true on one process, and on several when
    `per_device_train_batch_size` is a multiple of `num_generations` (each process gets whole
    groups). Pass `num_generations` to check that, and to split two adjacent rows whose prompts
    happen to be equal. Dataset columns (lists as long as the batch) reach `score_fn` as the
    one value of each row; other kwargs (`trainer_state`) are dropped.

    Args:
        score_fn: `(prompt, completion, **row) -> [(help, safe), ...]`, one pair (or a judge's
            `TurnScores`) per assistant turn in order; a list shorter than the group's longest
            marks a rollout that ended early, its missing turns scored as failures (module
            docstring). To score turns no rollout of the group reached, pad with
            `MISSING_TURN` up to the dialogue's turn count. Must be synchronous.
        config: λ, τ, β.
        num_generations: TRL's `num_generations`, when known.
        group_key: Maps a prompt to what identifies its group (default: the prompt itself);
            cheaper than comparing whole prompts that hold images.

    Returns:
        The reward function; its `last_groups` holds each group's μ, Var, U, α from the last call.

    Examples:
        >>> reward = make_turn_aware_reward(lambda p, c: [(1.0, 1.0), (0.0, c)])
        >>> [round(r, 3) for r in reward(["q", "q"], [1.0, 0.0])]
        [1.109, 0.547]
        >>> reward.last_groups[0].alpha.round(3).tolist()
        [0.438, 0.562]
    """
    return TurnAwareReward(
        score_fn,
        config or TurnAwareRewardConfig(),
        num_generations,
        None,
        "turn_aware_reward",
        group_key,
    )


def make_per_completion_reward(
    score_fn: TurnScoreFn,
    config: TurnAwareRewardConfig | None = None,
    *,
    num_generations: int | None = None,
) -> TurnAwareReward:
    """The final-turn baseline (`per_completion_rewards`) as a TRL reward, for ablations.

    Args:
        score_fn: As in `make_turn_aware_reward`.
        config: Only β is used.
        num_generations: As in `make_turn_aware_reward`.

    Returns:
        The reward function.
    """
    return TurnAwareReward(
        score_fn,
        config or TurnAwareRewardConfig(),
        num_generations,
        per_completion_rewards,
        "per_completion_reward",
    )
