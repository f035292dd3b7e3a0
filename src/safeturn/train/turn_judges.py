"""Per-turn (helpfulness, harmlessness) of a rollout, for the turn-aware GRPO reward.

Two scorers behind one spec string, registered in `TURN_SCORERS` (kind "turn scorer"; plugins
add more under the entry-point group `safeturn.turn_scorers`):

- `classifier` — the embedded classifier judge as a cheap, offline stand-in. Harmlessness is
  1 − P(harmful response) for a harmful sample (the request is the seed question when known,
  else the turn's user text) and 1 for a benign one. Helpfulness is 0 for a refusal and
  otherwise grows with the reply's length, saturating at `FULL_ANSWER_WORDS` words: a crude
  proxy, but it is what makes "refuse everything" lose to "answer the benign turns", and it
  varies between rollouts, which GRPO needs (equal rewards give zero advantage).
- `turn-scores:<model spec>` — `TurnScoresJudge` asked of any ChatModel, one call per turn, all
  turns of a rollout concurrently. A turn the judge fails on makes the whole rollout unscored
  (None): a partial score would bias the group statistics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from safeturn.errors import ModelSpecError
from safeturn.judges.classifier import ClassifierJudge, request_text
from safeturn.judges.llm import JudgeFailure
from safeturn.judges.refusal import detect_refusal
from safeturn.judges.specs import MODEL_SPEC, judge_model
from safeturn.judges.turn_scores import TurnScores, TurnScoresJudge
from safeturn.registry import Registry
from safeturn.train.rollouts import RolloutRecord

logger = logging.getLogger(__name__)

FULL_ANSWER_WORDS = 40
"""Words at which the classifier stand-in counts a non-refusal as fully helpful."""

T = TypeVar("T")


class TurnScorer(Protocol):
    """Scores every reply of a rollout; None when it cannot."""

    name: str

    def __call__(self, record: RolloutRecord) -> list[TurnScores] | None:
        """One `TurnScores` per reply, in turn order."""

    def close(self) -> None:
        """Release clients and loops."""


TURN_SCORERS: Registry[TurnScorer] = Registry("turn scorer", error=ModelSpecError)
"""The GRPO reward's per-turn scorers (`SafeGRPOConfig.judge`). The built-ins register below, in
this module, so it lists no built-in modules."""


def stand_in_helpfulness(reply: str) -> float:
    """0 for a refusal or an empty reply; else words / FULL_ANSWER_WORDS, capped at 1."""
    if not reply.strip() or detect_refusal(reply)[0]:
        return 0.0
    return min(1.0, len(reply.split()) / FULL_ANSWER_WORDS)


class ClassifierTurnScorer:
    """The offline stand-in (see the module docstring); all turns in one embedding batch."""

    name = "classifier"

    def __init__(self, judge: ClassifierJudge | None = None) -> None:
        self.judge = judge or ClassifierJudge()

    def __call__(self, record: RolloutRecord) -> list[TurnScores]:
        """Score every reply of the rollout in one classifier batch."""
        sample = record.sample
        pairs = [
            (request_text(sample, context, context.n_turns), reply)
            for context, reply in zip(record.contexts, record.replies, strict=True)
        ]
        harmful = sample.harmful is not False
        probabilities = self.judge.score_pairs(pairs) if harmful else [0.0] * len(pairs)
        return [
            TurnScores(stand_in_helpfulness(reply), 1.0 - p, f"P(harmful response)={p:.3f}")
            for reply, p in zip(record.replies, probabilities, strict=True)
        ]

    def close(self) -> None:
        """Nothing to release: the shared encoder stays loaded for the process."""


class ModelTurnScorer:
    """`TurnScoresJudge` on a private event loop (TRL calls rewards synchronously)."""

    def __init__(self, judge: TurnScoresJudge) -> None:
        self.judge = judge
        self.name = judge.name
        self.loop = asyncio.new_event_loop()
        self.failures = 0

    def _run(self, coroutine: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def __call__(self, record: RolloutRecord) -> list[TurnScores] | None:
        """Ask the judge about every reply at once; None if it failed on any."""
        seed = record.sample.seed_question
        calls = [
            self.judge.score_turn(context, reply, seed_question=seed)
            for context, reply in zip(record.contexts, record.replies, strict=True)
        ]

        async def gather() -> list[Any]:
            return await asyncio.gather(*calls, return_exceptions=True)

        results = self._run(gather())
        for turn, result in enumerate(results, start=1):
            if isinstance(result, JudgeFailure):
                self.failures += 1
                logger.warning(
                    "turn-scores judge failed on sample %r turn %d (%s); the rollout is unscored",
                    record.sample.id,
                    turn,
                    result,
                )
                return None
            if isinstance(result, BaseException):
                raise result
        return list(results)

    def close(self) -> None:
        """Close the judge model's client and the loop."""
        self._run(self.judge.aclose())
        self.loop.close()


@TURN_SCORERS.register("classifier", summary="offline stand-in: classifier harm + reply length")
def classifier_turn_scorer(**_model_options: Any) -> ClassifierTurnScorer:
    """`classifier`: no judge model, so model options are ignored."""
    return ClassifierTurnScorer()


@TURN_SCORERS.register(
    "turn-scores",
    summary="helpfulness and harmlessness per turn, asked of a model",
    example="turn-scores:openai:http://localhost:8000/v1#judge",
    argument=MODEL_SPEC,
)
def model_turn_scorer(model_spec: str, **model_options: Any) -> ModelTurnScorer:
    """`turn-scores:<model spec>`; the model options reach `load_model`."""
    return ModelTurnScorer(TurnScoresJudge(judge_model(model_spec, **model_options)))


def load_turn_scorer(spec: str, **model_options: Any) -> TurnScorer:
    """The scorer a GRPO judge spec names (`TURN_SCORERS`: `classifier`, `turn-scores:<model>`).

    Raises:
        ModelSpecError: Any other spec (the message lists the accepted forms).
    """
    return TURN_SCORERS.create(spec, **model_options)
