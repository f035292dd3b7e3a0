"""DREAM step 3: iterative RLAIF on TRL's `DPOTrainer` (DESIGN §5).

Each round samples `k` replies per prompt from the current policy, scores every reply 1–10
with a risk-aware judge (`judges.risk_score`) given the sample's disentangled risks, turns the
scores into preference pairs, and trains DPO with the round's starting policy as the reference.
The next round samples from the new policy, so the preferences follow the model as it improves
(on-policy pairs), which is the point of iterating rather than training once on a fixed set.

Everything a round produced is kept: `output_dir/round-{r}` is a full checkpoint (a LoRA
adapter is merged before saving, so every round loads the same way) and `output_dir/rounds.json`
holds its numbers. A rerun with the same settings reuses finished rounds and continues from the
last one, so an interrupted run or a run extended with more rounds never retrains.

Images: a VLM sees them through its processor, in sampling and in TRL's vision collator. A
text-only model reads them through the OCR bridge, as it does in evaluation, and the DPO
prompt holds that text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from safeturn.errors import ImageError, SafeturnError, SchemaError
from safeturn.judges.llm import JudgeFailure
from safeturn.judges.refusal import detect_refusal
from safeturn.judges.risk_score import (
    LOW_SCORE,
    OFFLINE_SPEC,
    RiskScore,
    RiskScorer,
    ScoreItem,
    parse_risk_scorer_spec,
)
from safeturn.schema import Dialogue, Sample, read_jsonl
from safeturn.synth.risks import Risk, risks_by_sample
from safeturn.train.config import EMBEDDED, LoraSettings, resolve_model_dir, save_trained
from safeturn.train.config import read_config as base_read_config
from safeturn.train.config import validated as base_validated
from safeturn.train.policy import Policy

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

ROUNDS_FILE = "rounds.json"
ROUNDS_VERSION = 1
Pairing = Literal["best-worst", "all"]


class RlaifError(SafeturnError, ValueError):
    """A config, data file or round cannot be used; the message names the item."""


class RlaifSettings(BaseModel):
    """Everything of an RLAIF run except the starting model and where it is saved.

    `DreamConfig` embeds these settings and supplies the model (its SFT checkpoint) itself.
    """

    model_config = ConfigDict(extra="forbid")

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
    max_steps: int = -1
    """DPO optimizer steps per round; -1 trains `epochs` passes over the round's pairs."""
    epochs: float = Field(default=1.0, gt=0.0)
    batch_size: int = Field(default=2, ge=1)
    """Pairs per device batch."""
    grad_accum: int = Field(default=1, ge=1)
    max_length: int | None = Field(default=1024, ge=8)
    seed: int = 0
    lora: LoraSettings | None = None
    eval_data: Path | None = None
    """Samples to evaluate each round's model on (greedy replies, scored by `eval_judge`)."""
    eval_judge: str | None = None
    """Defaults to `judge`."""
    eval_max_new_tokens: int | None = Field(default=None, ge=1)
    """Defaults to `max_new_tokens`."""
    eval_baseline: bool = True
    """Also evaluate the starting policy (round 0), the reference every round is compared to."""

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> Self:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"max_steps must be positive, or -1 to use epochs (got {self.max_steps})"
            )
        return self


class RlaifConfig(RlaifSettings):
    """One RLAIF run: the starting model, the settings and the output folder."""

    model: str = EMBEDDED
    """A local checkpoint directory, or `embedded` for the converted SmolLM2."""
    output_dir: Path

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> RlaifConfig:
        """Read a YAML config (optional) and apply overrides; `None` overrides are ignored.

        Raises:
            RlaifError: The file is unreadable, or the merged values are invalid.
        """
        where = f"config {path}" if path else "RLAIF config"
        config: RlaifConfig = validated(cls, read_config(path, overrides), where)
        return config

    def fingerprint(self) -> dict[str, Any]:
        """The settings that shape a round's training; a rerun must match them to resume."""
        skip = {"rounds", "eval_data", "eval_judge", "eval_max_new_tokens", "eval_baseline"}
        skip |= {"output_dir", "gen_batch_size"}
        return self.model_dump(mode="json", exclude=skip)


def read_config(path: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """`train.config.read_config` raising `RlaifError`."""
    return base_read_config(path, overrides, error=RlaifError)


def validated(model: type[M], values: dict[str, Any], where: str) -> M:
    """`train.config.validated` raising `RlaifError`."""
    return base_validated(model, values, where, error=RlaifError)


class PromptItem(NamedTuple):
    """One training or evaluation prompt."""

    sample: Sample
    prompt: Dialogue
    """The dialogue up to and including its last user message."""
    risks: tuple[Risk, ...]


class Pair(NamedTuple):
    """A preference between two of one prompt's replies (indices into its k replies)."""

    chosen: int
    rejected: int


def prompt_dialogue(sample: Sample) -> Dialogue:
    """The dialogue up to its last user message: what the policy answers.

    Raises:
        RlaifError: The sample has no user message.
    """
    messages = sample.dialogue.messages
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    if last < 0:
        raise RlaifError(f"sample {sample.id!r} has no user message to answer")
    return Dialogue(messages=messages[: last + 1])


def load_prompts(
    path: Path, risks: Path | None = None, *, require_risks: bool = False
) -> list[PromptItem]:
    """Read samples and attach each one's kept risks.

    Raises:
        RlaifError: The file is missing, empty or unreadable, a sample has no user message, or
            (with `require_risks`) harmful samples have no risk record; the message names them.
    """
    if not path.is_file():
        raise RlaifError(f"prompt data {path} does not exist")
    try:
        samples = list(read_jsonl(path))
        records = risks_by_sample(risks) if risks is not None else {}
    except (SchemaError, ImageError) as exc:
        raise RlaifError(str(exc)) from exc
    if not samples:
        raise RlaifError(f"{path} holds no samples; RLAIF needs prompts to sample from")
    if require_risks:
        missing = [s.id for s in samples if s.harmful is not False and s.id not in records]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise RlaifError(
                f"{path}: no risk record in {risks} for sample(s) {shown}{more}; run "
                "`safeturn synth mrd` on them or set require_risks: false"
            )
    items = []
    for sample in samples:
        record = records.get(sample.id)
        kept = tuple(record.kept()) if record is not None else ()
        try:
            items.append(PromptItem(sample, prompt_dialogue(sample), kept))
        except RlaifError as exc:
            raise RlaifError(f"{path}: {exc}") from exc
    return items


def build_pairs(
    scores: Sequence[float | None],
    texts: Sequence[str],
    *,
    margin: float,
    pairing: Pairing = "best-worst",
) -> list[Pair]:
    """Preference pairs among one prompt's replies.

    Unscored replies (judge failures, `None`) take no part. Two replies make a pair only when
    their scores differ by more than zero and by at least `margin`, and their texts differ:
    identical texts teach DPO nothing. With `best-worst`, the first highest-scored reply is
    chosen over the first lowest-scored one; with `all`, every qualifying pair is used
    (higher score chosen), in index order.
    """
    scored = [(i, s) for i, s in enumerate(scores) if s is not None]

    def qualifies(high: tuple[int, float], low: tuple[int, float]) -> bool:
        gap = high[1] - low[1]
        return gap > 0 and gap >= margin and texts[high[0]].strip() != texts[low[0]].strip()

    if pairing == "best-worst":
        if len(scored) < 2:
            return []
        best = max(scored, key=lambda x: x[1])
        worst = min(scored, key=lambda x: x[1])
        return [Pair(best[0], worst[0])] if qualifies(best, worst) else []
    pairs = []
    for a in range(len(scored)):
        for b in range(a + 1, len(scored)):
            high, low = sorted((scored[a], scored[b]), key=lambda x: -x[1])
            if qualifies(high, low):
                pairs.append(Pair(high[0], low[0]))
    return pairs


class TrainStats(BaseModel):
    """What TRL logged while training one round."""

    steps: int
    loss_first: float
    loss_last: float
    reward_accuracy: float | None = None
    """`rewards/accuracies` at the last logged step (the first step is always 0: policy = ref)."""
    reward_margin: float | None = None
    """`rewards/margins` at the last logged step."""
    seconds: float

    @property
    def seconds_per_step(self) -> float:
        """Wall time per DPO step (model loading excluded)."""
        return self.seconds / max(self.steps, 1)


class EvalStats(BaseModel):
    """A model's greedy replies to the eval prompts, scored by the eval judge."""

    samples: int
    scored: int
    judge_failures: int
    mean_score: float | None
    low_rate: float | None
    """Fraction of scored replies below `LOW_SCORE`."""
    harmful: int
    unsafe_rate: float | None
    """Fraction of scored replies to harmful (or unlabelled) samples below `LOW_SCORE`."""
    benign: int
    benign_refusal_rate: float | None
    """Fraction of replies to benign samples that `detect_refusal` calls a refusal."""
    seconds: float


class RoundRecord(BaseModel):
    """One finished round, as stored in `rounds.json`."""

    round: int
    checkpoint: Path
    prompts: int
    responses: int
    judge_failures: int
    pairs: int
    skipped_prompts: int
    """Prompts that gave no pair at the margin (all replies tied, too close, or unscored)."""
    mean_score: float | None
    """Mean judge score of the round's sampled replies: the policy's on-policy quality."""
    train: TrainStats
    eval: EvalStats | None = None
    seconds_sampling: float
    seconds_scoring: float
    seconds: float


class RlaifResult(BaseModel):
    """A finished run: the last round's checkpoint and every round's numbers."""

    checkpoint: Path
    output_dir: Path
    baseline: EvalStats | None = None
    rounds: list[RoundRecord]
    reused: list[int] = Field(default_factory=list)
    """Rounds taken from an earlier run's `rounds.json` instead of being trained again."""


class _Log(BaseModel):
    version: int = ROUNDS_VERSION
    fingerprint: dict[str, Any]
    baseline: EvalStats | None = None
    rounds: list[RoundRecord] = Field(default_factory=list)


def _read_log(config: RlaifConfig) -> _Log:
    path = config.output_dir / ROUNDS_FILE
    fresh = _Log(fingerprint=config.fingerprint())
    if not path.is_file():
        return fresh
    try:
        log = _Log.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise RlaifError(f"{path} is unreadable ({exc}); delete it to start over") from exc
    if log.version > ROUNDS_VERSION:
        raise RlaifError(f"{path} has version {log.version}, newer than {ROUNDS_VERSION}")
    if log.fingerprint != fresh.fingerprint:
        changed = sorted(
            key
            for key in {*log.fingerprint, *fresh.fingerprint}
            if log.fingerprint.get(key) != fresh.fingerprint.get(key)
        )
        raise RlaifError(
            f"{config.output_dir} holds a run with other settings ({', '.join(changed)}); "
            "use another output_dir, or the same settings to resume"
        )
    kept: list[RoundRecord] = []
    for record in log.rounds:  # keep the consecutive finished rounds whose checkpoints exist
        # the layout is fixed, so a moved output folder still resumes
        checkpoint = config.output_dir / f"round-{record.round}"
        if record.round != len(kept) + 1 or not (checkpoint / "config.json").is_file():
            break
        kept.append(record.model_copy(update={"checkpoint": checkpoint}))
    return log.model_copy(update={"rounds": kept})


def _write_log(config: RlaifConfig, log: _Log) -> None:
    path = config.output_dir / ROUNDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(log.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


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
        SFTConfigError: The model is neither `embedded` nor a local checkpoint directory.
    """
    say = progress or (lambda _msg: None)
    items = load_prompts(config.data, config.risks, require_risks=config.require_risks)
    evals = load_prompts(config.eval_data, config.risks) if config.eval_data else []
    log = _read_log(config)
    reused = [r.round for r in log.rounds[: config.rounds]]
    start_dir = resolve_model_dir(config.model)
    with asyncio.Runner() as runner:
        owned: list[RiskScorer] = []  # closed at the end; the caller closes what it passed
        judge = scorer or _built(parse_risk_scorer_spec(config.judge), owned)
        eval_judge = eval_scorer or judge
        if eval_scorer is None and config.eval_judge:
            eval_judge = _built(parse_risk_scorer_spec(config.eval_judge), owned)
        try:
            if evals and config.eval_baseline and log.baseline is None:
                say("evaluating the starting policy")
                policy = Policy.load(start_dir)
                log.baseline = _evaluate(policy, evals, eval_judge, config, runner)
                del policy
                _write_log(config, log)
            for number in range(len(log.rounds) + 1, config.rounds + 1):
                policy_dir = log.rounds[-1].checkpoint if log.rounds else start_dir
                record = _run_round(
                    _Round(number, policy_dir, config, runner, say), items, evals, judge, eval_judge
                )
                log.rounds.append(record)
                _write_log(config, log)
        finally:
            for built in owned:
                runner.run(built.aclose())
    rounds = log.rounds[: config.rounds]
    return RlaifResult(
        checkpoint=rounds[-1].checkpoint,
        output_dir=config.output_dir,
        baseline=log.baseline,
        rounds=rounds,
        reused=reused,
    )


def _built(scorer: RiskScorer, owned: list[RiskScorer]) -> RiskScorer:
    owned.append(scorer)
    return scorer


class _Round(NamedTuple):
    number: int
    policy_dir: Path
    config: RlaifConfig
    runner: asyncio.Runner
    say: Callable[[str], None]


def _run_round(
    ctx: _Round,
    items: Sequence[PromptItem],
    evals: Sequence[PromptItem],
    judge: RiskScorer,
    eval_judge: RiskScorer,
) -> RoundRecord:
    """Sample, score, pair, train, save and evaluate one round."""
    import torch

    config, number = ctx.config, ctx.number
    started = time.perf_counter()
    ctx.say(f"round {number}: sampling {config.k} replies for {len(items)} prompts")
    policy = Policy.load(ctx.policy_dir)
    torch.manual_seed(config.seed * 1_000 + number)
    replies = policy.sample(
        [it.prompt for it in items],
        k=config.k,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        batch_size=config.gen_batch_size,
    )
    sampled = time.perf_counter()
    ctx.say(f"round {number}: scoring {len(items) * config.k} replies with {judge.name}")
    flat = [
        ScoreItem(it.sample, it.prompt, text, it.risks)
        for it, texts in zip(items, replies, strict=True)
        for text in texts
    ]
    results = ctx.runner.run(judge.score_batch(flat))
    scores = [r.score if isinstance(r, RiskScore) else None for r in results]
    failures = [r for r in results if isinstance(r, JudgeFailure)]
    for failure in failures[:3]:
        logger.warning("round %d: a reply was left unscored: %s", number, failure.describe())
    scored_at = time.perf_counter()
    rows: list[dict[str, Any]] = []
    skipped = 0
    for index, (item, texts) in enumerate(zip(items, replies, strict=True)):
        own = scores[index * config.k : (index + 1) * config.k]
        pairs = build_pairs(own, texts, margin=config.margin, pairing=config.pairing)
        if not pairs:
            skipped += 1
        rows.extend(policy.dpo_row(item.prompt, texts[p.chosen], texts[p.rejected]) for p in pairs)
    if not rows:
        raise RlaifError(
            f"round {number}: no preference pairs; all {len(items)} prompts were skipped "
            f"({len(failures)} of {len(flat)} replies unscored). Raise k or temperature, or "
            f"lower margin (now {config.margin})"
        )
    ctx.say(f"round {number}: DPO on {len(rows)} pairs")
    round_dir = config.output_dir / f"round-{number}"
    train = _train_dpo(policy, ctx.policy_dir, rows, round_dir, config)
    del policy
    evaluation = None
    if evals:
        ctx.say(f"round {number}: evaluating on {len(evals)} prompts")
        evaluation = _evaluate(Policy.load(round_dir), evals, eval_judge, config, ctx.runner)
    valid = [s for s in scores if s is not None]
    return RoundRecord(
        round=number,
        checkpoint=round_dir,
        prompts=len(items),
        responses=len(flat),
        judge_failures=len(failures),
        pairs=len(rows),
        skipped_prompts=skipped,
        mean_score=sum(valid) / len(valid) if valid else None,
        train=train,
        eval=evaluation,
        seconds_sampling=sampled - started,
        seconds_scoring=scored_at - sampled,
        seconds=time.perf_counter() - started,
    )


def _train_dpo(
    policy: Policy, ref_dir: Path, rows: list[dict[str, Any]], out: Path, config: RlaifConfig
) -> TrainStats:
    """Train TRL's DPOTrainer on the round's pairs and save the (merged) model to `out`."""
    from datasets import Dataset
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    peft_config = None
    ref_model = None
    if config.lora is not None:
        peft_config = config.lora.to_peft()
    else:  # the round's starting policy, frozen; with LoRA, TRL disables the adapter instead
        ref_model = Policy.load(ref_dir).model
    args = DPOConfig(
        output_dir=str(out),
        max_steps=config.max_steps,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        beta=config.beta,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        bf16=False,
        activation_checkpointing=False,
        logging_steps=1,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    trainer = DPOTrainer(
        model=policy.model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=policy.processing,
        peft_config=peft_config,
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    logs = [e for e in trainer.state.log_history if "loss" in e]
    losses = [float(e["loss"]) for e in logs]
    if not losses or not all(math.isfinite(x) for x in losses):
        logger.warning("DPO logged non-finite or no losses: %s", losses)
    save_trained(trainer, out, merge_lora=True)
    last = logs[-1] if logs else {}
    return TrainStats(
        steps=int(trainer.state.global_step),
        loss_first=losses[0] if losses else math.nan,
        loss_last=losses[-1] if losses else math.nan,
        reward_accuracy=_float(last.get("rewards/accuracies")),
        reward_margin=_float(last.get("rewards/margins")),
        seconds=seconds,
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _evaluate(
    policy: Policy,
    evals: Sequence[PromptItem],
    judge: RiskScorer,
    config: RlaifConfig,
    runner: asyncio.Runner,
) -> EvalStats:
    """Greedy replies to the eval prompts, scored; low and refusal rates by sample label."""
    started = time.perf_counter()
    replies = policy.sample(
        [it.prompt for it in evals],
        k=1,
        max_new_tokens=config.eval_max_new_tokens or config.max_new_tokens,
        temperature=0.0,
        top_p=1.0,
        batch_size=config.gen_batch_size,
    )
    texts = [r[0] for r in replies]
    items = [
        ScoreItem(it.sample, it.prompt, t, it.risks) for it, t in zip(evals, texts, strict=True)
    ]
    results = runner.run(judge.score_batch(items))
    scored = [
        (it, r.score) for it, r in zip(evals, results, strict=True) if isinstance(r, RiskScore)
    ]
    harmful = [s for it, s in scored if it.sample.harmful is not False]
    benign = [t for it, t in zip(evals, texts, strict=True) if it.sample.harmful is False]

    def rate(values: Sequence[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    values = [s for _, s in scored]
    return EvalStats(
        samples=len(evals),
        scored=len(scored),
        judge_failures=len(evals) - len(scored),
        mean_score=sum(values) / len(values) if values else None,
        low_rate=rate([s < LOW_SCORE for s in values]),
        harmful=sum(1 for it in evals if it.sample.harmful is not False),
        unsafe_rate=rate([s < LOW_SCORE for s in harmful]),
        benign=len(benign),
        benign_refusal_rate=rate([detect_refusal(t)[0] for t in benign]),
        seconds=time.perf_counter() - started,
    )
