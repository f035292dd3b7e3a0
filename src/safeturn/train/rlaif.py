"""DREAM step 3: iterative RLAIF on TRL's `DPOTrainer` (DESIGN §5).

Each round samples `k` replies per prompt from the current policy, scores every reply 1–10
with a risk-aware judge (`judges.risk_score`) given the sample's disentangled risks, turns the
scores into preference pairs, and trains DPO with the round's starting policy as the reference.
The next round samples from the new policy, so the preferences follow the model as it improves
(on-policy pairs), which is the point of iterating rather than training once on a fixed set.

Everything a round produced is kept: `output_dir/round-{r}` is a full checkpoint (a LoRA
adapter is merged before saving, so every round loads the same way) and `output_dir/rounds.json`
holds its numbers. A rerun with the same settings reuses finished rounds and continues from the
last one, so an interrupted run or a run extended with more rounds never retrains. The settings
are compared through a fingerprint (secrets scrubbed, data and risk files hashed); the eval
settings have their own, so a new eval set re-evaluates stored rounds without retraining. A
round's scored replies are kept in `round-{r}/scored.jsonl` before DPO, so a round interrupted
in training repeats no judge call.

Every round is evaluated: on `eval_data` when given, else on the training prompts themselves,
which is flagged as in-sample (`EvalStats.in_sample`) because it flatters the policy.

Images: a VLM sees them through its processor, in sampling and in TRL's vision collator. A
text-only model reads them through the OCR bridge, as it does in evaluation, and the DPO
prompt holds that text.

The parts live beside this module: `rlaif_data` (prompts and pairs), `rlaif_round` (one round)
and `rlaif_log` (`rounds.json`); this module holds the config and runs the rounds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from safeturn.errors import RlaifError, SafeturnError
from safeturn.judges.risk_score import OFFLINE_SPEC, RiskScorer, parse_risk_scorer_spec
from safeturn.redact import scrub_secrets
from safeturn.train.config import OptimSettings, TrainerConfig, resolve_model_dir
from safeturn.train.policy import Policy
from safeturn.train.rlaif_data import (
    Pair,
    Pairing,
    PromptItem,
    build_pairs,
    file_sha256,
    load_prompts,
    prompt_dialogue,
)
from safeturn.train.rlaif_log import (
    EvalStats,
    RlaifResult,
    RoundRecord,
    RoundsLog,
    TrainStats,
    read_log,
    write_log,
)
from safeturn.train.rlaif_round import SCORED_FILE, Round, drop_later_scores, evaluate, run_round
from safeturn.train.trainers import TRAINERS

__all__ = [
    "SCORED_FILE",
    "EvalStats",
    "Pair",
    "Policy",
    "PromptItem",
    "RlaifConfig",
    "RlaifError",
    "RlaifResult",
    "RlaifSettings",
    "RoundRecord",
    "TrainStats",
    "build_pairs",
    "file_sha256",
    "load_prompts",
    "prompt_dialogue",
    "train_rlaif",
]

logger = logging.getLogger(__name__)


class RlaifSettings(OptimSettings):
    """Everything of an RLAIF run except the starting model and where it is saved.

    `DreamConfig` embeds these settings and supplies the model (its SFT checkpoint) itself.
    """

    data: Path
    """A safeturn JSONL of samples; each prompt is the dialogue up to its last user message."""
    risks: Path | None = None
    """A risk JSONL (`synth.risks`) keyed by sample id; the judge sees each sample's kept risks."""
    require_risks: bool = False
    """Refuse to start when a harmful sample has no risk record (benign ones never need one)."""
    judge: str = OFFLINE_SPEC
    """`risk-score-offline` or `risk-score:<model spec>`."""
    k: int = Field(default=4, ge=2)
    """Replies sampled per prompt; a pair needs two."""
    rounds: int = Field(default=2, ge=1)
    pairing: Pairing = "best-worst"
    """`best-worst`: one pair per prompt; `all`: every pair whose score gap reaches `margin`."""
    margin: float = Field(default=1.0, ge=0.0)
    """Smallest score gap (on 1–10) that makes a pair; equal scores never do."""
    max_new_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    gen_batch_size: int = Field(default=8, ge=1)
    """Sequences per `generate` call (a prompt's k replies count k)."""
    beta: float = Field(default=0.1, gt=0.0)
    """DPO's KL strength: higher keeps the policy closer to the round's reference."""
    learning_rate: float = Field(default=5e-6, gt=0.0)
    max_length: int | None = Field(default=1024, ge=8)
    eval_data: Path | None = None
    """Samples to evaluate each round's model on (greedy replies, scored by `eval_judge`)."""
    eval_judge: str | None = None
    """Defaults to `judge`."""
    eval_max_new_tokens: int | None = Field(default=None, ge=1)
    """Defaults to `max_new_tokens`."""
    eval_baseline: bool = True
    """Also evaluate the starting policy (round 0), the reference every round is compared to."""


class RlaifConfig(RlaifSettings, TrainerConfig):
    """One RLAIF run: the starting model, the settings and the output folder.

    `max_steps` and `epochs` count per round (DPO on that round's pairs).
    """

    load_error: ClassVar[type[SafeturnError]] = RlaifError
    label: ClassVar[str] = "RLAIF config"

    def fingerprint(self) -> dict[str, Any]:
        """The settings that shape a round's training; a rerun must match them to resume.

        Secrets (URL credentials, API-key fields) are scrubbed, since the fingerprint is stored
        in `rounds.json`. The data and risk files count by content as well as by path, so a
        file edited in place is not silently resumed.
        """
        skip = {"rounds", "eval_data", "eval_judge", "eval_max_new_tokens", "eval_baseline"}
        skip |= {"output_dir", "gen_batch_size", "logging_steps"}
        values = scrub_secrets(self.model_dump(mode="json", exclude=skip))
        values["data_sha256"] = file_sha256(self.data)
        values["risks_sha256"] = file_sha256(self.risks)
        return values

    def eval_fingerprint(self) -> dict[str, Any]:
        """The settings that shape an evaluation, stored with each `EvalStats`.

        They are not part of `fingerprint` (a new eval set must not force retraining), so a
        rerun compares them per round and evaluates again, without training, where they differ.
        """
        return scrub_secrets(
            {
                "eval_data": None if self.eval_data is None else str(self.eval_data),
                "eval_data_sha256": file_sha256(self.eval_data),
                "eval_judge": self.eval_judge or self.judge,
                "eval_max_new_tokens": self.eval_max_new_tokens or self.max_new_tokens,
                "in_sample": self.eval_data is None,
            }
        )


@TRAINERS.register(
    "dpo",
    summary="iterative RLAIF: k replies per prompt, scored by a risk-aware judge, DPO; repeat",
    config_file="configs/train/dpo_cpu_toy.yaml",
    config=RlaifConfig,
)
def train_rlaif(
    config: RlaifConfig,
    *,
    scorer: RiskScorer | None = None,
    eval_scorer: RiskScorer | None = None,
    progress: Callable[[str], None] | None = None,
) -> RlaifResult:
    """Run (or resume) the rounds and return every round's numbers.

    Args:
        config: The run.
        scorer: The judge for training pairs; built from `config.judge` when omitted.
        eval_scorer: The judge for evaluation; `config.eval_judge`, else the training judge.
        progress: Called with a short status line as each phase starts (for a CLI spinner).

    Returns:
        The result; `checkpoint` is the last round's model, loadable with transformers.

    Raises:
        RlaifError: Bad data or settings, or a round that produced no preference pair.
        TrainConfigError: The model is neither `embedded` nor a local checkpoint directory.
    """
    say = progress or (lambda _msg: None)
    items, evals = _prompts(config)
    log = read_log(config)
    write_log(config, log)  # from now on the fingerprint guards the round folders' files
    reused = [r.round for r in log.rounds[: config.rounds]]
    start_dir = resolve_model_dir(config.model)
    with asyncio.Runner() as runner:
        owned: list[RiskScorer] = []  # closed at the end; the caller closes what it passed
        judge = scorer or _built(parse_risk_scorer_spec(config.judge), owned)
        eval_judge = eval_scorer or judge
        if eval_scorer is None and config.eval_judge:
            eval_judge = _built(parse_risk_scorer_spec(config.eval_judge), owned)
        run = _Rounds(config, log, runner, say, evals, eval_judge)
        try:
            reevaluated = run.evaluate_stored(start_dir)
            for number in range(len(log.rounds) + 1, config.rounds + 1):
                policy_dir = log.rounds[-1].checkpoint if log.rounds else start_dir
                step = Round(number, policy_dir, config, runner, say)
                log.rounds.append(run_round(step, items, evals, judge, eval_judge))
                write_log(config, log)
                drop_later_scores(config.output_dir, number)
        finally:
            for built in owned:
                runner.run(built.aclose())
    rounds = log.rounds[: config.rounds]
    return RlaifResult(
        checkpoint=rounds[-1].checkpoint,
        output_dir=config.output_dir,
        # a baseline made with other eval settings (and not redone) would mislead
        baseline=log.baseline if _current(log.baseline, config) else None,
        rounds=rounds,
        reused=reused,
        reevaluated=reevaluated,
    )


def _prompts(config: RlaifConfig) -> tuple[list[PromptItem], list[PromptItem]]:
    """The training prompts and the eval prompts (the training ones without `eval_data`)."""
    items = load_prompts(config.data, config.risks, require_risks=config.require_risks)
    if config.eval_data is not None:
        return items, load_prompts(config.eval_data, config.risks)
    logger.warning(
        "no eval_data: every round is evaluated on its %d training prompts, which is "
        "in-sample and optimistic; set eval_data to held-out samples for a fair estimate",
        len(items),
    )
    return items, items


class _Rounds:
    """What every evaluation of one run shares: the log, the eval prompts and judge."""

    def __init__(
        self,
        config: RlaifConfig,
        log: RoundsLog,
        runner: asyncio.Runner,
        say: Callable[[str], None],
        evals: list[PromptItem],
        eval_judge: RiskScorer,
    ) -> None:
        self.config, self.log, self.runner, self.say = config, log, runner, say
        self.evals, self.eval_judge = evals, eval_judge

    def evaluate_stored(self, start_dir: Path) -> list[int]:
        """Evaluate the starting policy and the reused rounds where the eval settings changed.

        Returns:
            The rounds evaluated again (0: the starting policy).
        """
        config, log = self.config, self.log
        again: list[int] = []
        if config.eval_baseline and not _current(log.baseline, config):
            if log.baseline is not None:
                again.append(0)
            self.say("evaluating the starting policy")
            log.baseline = self._evaluate(start_dir)
            write_log(config, log)
        for index, done in enumerate(log.rounds[: config.rounds]):
            if _current(done.eval, config):
                continue
            self.say(f"round {done.round}: evaluating again (the eval settings changed)")
            log.rounds[index] = done.model_copy(update={"eval": self._evaluate(done.checkpoint)})
            again.append(done.round)
            write_log(config, log)
        return again

    def _evaluate(self, model_dir: Path) -> EvalStats:
        policy = Policy.load(model_dir)
        return evaluate(policy, self.evals, self.eval_judge, self.config, self.runner)


def _current(stats: EvalStats | None, config: RlaifConfig) -> bool:
    """Whether stored eval numbers were made with the current eval settings."""
    return stats is not None and stats.fingerprint == config.eval_fingerprint()


def _built(scorer: RiskScorer, owned: list[RiskScorer]) -> RiskScorer:
    owned.append(scorer)
    return scorer
