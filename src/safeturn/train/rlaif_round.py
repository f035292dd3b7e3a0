"""One RLAIF round: sample k replies per prompt, score them, pair them, train DPO, evaluate.

The scored replies are kept in `round-{r}/scored.jsonl` before DPO, so a round interrupted in
training repeats no judge call (possibly a paid one). Every round's model is evaluated with
greedy replies on the eval prompts (`evaluate`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ValidationError

from safeturn.errors import RlaifError
from safeturn.judges.llm import JudgeFailure
from safeturn.judges.refusal import detect_refusal
from safeturn.judges.risk_score import LOW_SCORE, RiskScore, RiskScorer, ScoreItem
from safeturn.train.config import save_trained
from safeturn.train.policy import Policy
from safeturn.train.rlaif_data import PromptItem, build_pairs, names_of
from safeturn.train.rlaif_log import EvalStats, RoundRecord, TrainStats

if TYPE_CHECKING:
    from safeturn.train.rlaif import RlaifConfig

logger = logging.getLogger(__name__)

SCORED_FILE = "scored.jsonl"
"""A round's sampled replies and their scores, kept so a resumed round repeats no judge call."""
MIN_COMPLETION_TOKENS = 8
"""Reply tokens a DPO row must keep under `max_length`; fewer teach (almost) nothing."""


def drop_later_scores(output_dir: Path, number: int) -> None:
    """Delete `scored.jsonl` of the rounds after `number`.

    They were sampled from a model that round `number` has just replaced (retrained), so
    reusing them would train on stale, off-policy pairs.
    """
    for path in output_dir.glob(f"round-*/{SCORED_FILE}"):
        suffix = path.parent.name.removeprefix("round-")
        if suffix.isdigit() and int(suffix) > number:
            path.unlink()


class Round(NamedTuple):
    """One round to run: its number, the policy it starts from, and the run's context."""

    number: int
    policy_dir: Path
    config: RlaifConfig
    runner: asyncio.Runner
    say: Callable[[str], None]


def run_round(
    ctx: Round,
    items: Sequence[PromptItem],
    evals: Sequence[PromptItem],
    judge: RiskScorer,
    eval_judge: RiskScorer,
) -> RoundRecord:
    """Sample, score, pair, train, save and evaluate one round.

    The scored replies are written to `round-{r}/scored.jsonl` before DPO and reused when an
    interrupted round runs again, so no judge call (possibly a paid one) is repeated.
    """
    config, number = ctx.config, ctx.number
    started = time.perf_counter()
    round_dir = config.output_dir / f"round-{number}"
    policy = Policy.load(ctx.policy_dir)
    replies, scores, reused, sampled = _scored_replies(ctx, policy, items, judge)
    scored_at = time.perf_counter()
    rows, skipped, skipped_long = _checked_rows(ctx, policy, items, replies, scores)
    ctx.say(f"round {number}: DPO on {len(rows)} pairs")
    train = _train_dpo(policy, ctx.policy_dir, rows, round_dir, config)
    del policy
    ctx.say(f"round {number}: evaluating on {len(evals)} prompts")
    evaluation = evaluate(Policy.load(round_dir), evals, eval_judge, config, ctx.runner)
    valid = [s for s in scores if s is not None]
    return RoundRecord(
        round=number,
        checkpoint=round_dir,
        prompts=len(items),
        responses=len(scores),
        judge_failures=len(scores) - len(valid),
        pairs=len(rows),
        skipped_prompts=skipped,
        skipped_long=skipped_long,
        scores_reused=reused,
        mean_score=sum(valid) / len(valid) if valid else None,
        train=train,
        eval=evaluation,
        seconds_sampling=sampled - started,
        seconds_scoring=scored_at - sampled,
        seconds=time.perf_counter() - started,
    )


def _scored_replies(
    ctx: Round, policy: Policy, items: Sequence[PromptItem], judge: RiskScorer
) -> tuple[list[list[str]], list[float | None], bool, float]:
    """The round's k replies per prompt and their flat scores: stored, or sampled and scored.

    Returns:
        Replies, scores, whether they came from `scored.jsonl`, and when sampling ended.
    """
    import torch

    config, number = ctx.config, ctx.number
    scored_path = config.output_dir / f"round-{number}" / SCORED_FILE
    stored = _read_scored(scored_path, items, config.k)
    if stored is not None:
        ctx.say(f"round {number}: reusing the scored replies in {scored_path}")
        return stored[0], stored[1], True, time.perf_counter()
    ctx.say(f"round {number}: sampling {config.k} replies for {len(items)} prompts")
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
    _write_scored(scored_path, items, replies, scores)
    return [list(texts) for texts in replies], scores, False, sampled


def _checked_rows(
    ctx: Round,
    policy: Policy,
    items: Sequence[PromptItem],
    replies: Sequence[Sequence[str]],
    scores: Sequence[float | None],
) -> tuple[list[dict[str, Any]], int, int]:
    """The round's DPO rows, the prompts without a pair, and the pairs left out as too long.

    Raises:
        RlaifError: No pair is left (too close, unscored, or no room for the reply).
    """
    config, number = ctx.config, ctx.number
    rows, skipped, long_ids, skipped_long = _preference_rows(policy, items, replies, scores, config)
    if long_ids:
        logger.warning(
            "round %d: %d pair(s) left out: the prompt of %s leaves fewer than %d of "
            "max_length %s tokens for the reply",
            number,
            skipped_long,
            names_of(long_ids),
            MIN_COMPLETION_TOKENS,
            config.max_length,
        )
    if not rows and long_ids:
        raise RlaifError(
            f"round {number}: no preference pair fits max_length {config.max_length}: the "
            f"prompt of {names_of(long_ids)} leaves fewer than {MIN_COMPLETION_TOKENS} tokens for "
            "the reply; raise max_length or use shorter dialogues"
        )
    if not rows:
        unscored = sum(1 for score in scores if score is None)
        raise RlaifError(
            f"round {number}: no preference pairs; all {len(items)} prompts were skipped "
            f"({unscored} of {len(scores)} replies unscored). Raise k or temperature, or "
            f"lower margin (now {config.margin})"
        )
    return rows, skipped, skipped_long


def _preference_rows(
    policy: Policy,
    items: Sequence[PromptItem],
    replies: Sequence[Sequence[str]],
    scores: Sequence[float | None],
    config: RlaifConfig,
) -> tuple[list[dict[str, Any]], int, list[str], int]:
    """DPO rows of the round, leaving out pairs whose prompt would crowd out the reply.

    TRL truncates prompt + reply to `max_length` from the end, so a long multi-turn prompt
    leaves a pair with no reply tokens: its loss stays ln 2 and it has no gradient, yet it would
    be counted as a pair. Such prompts are measured with the policy's own template and tokenizer
    (images included) and their pairs dropped.

    Returns:
        The rows, the prompts without a pair, the ids of prompts too long, and their pairs.
    """
    limit = None if config.max_length is None else config.max_length - MIN_COMPLETION_TOKENS
    rows: list[dict[str, Any]] = []
    skipped = skipped_long = 0
    long_ids: list[str] = []
    for index, (item, texts) in enumerate(zip(items, replies, strict=True)):
        own = scores[index * config.k : (index + 1) * config.k]
        pairs = build_pairs(own, texts, margin=config.margin, pairing=config.pairing)
        if not pairs:
            skipped += 1
            continue
        if limit is not None and policy.prompt_length(item.prompt) > limit:
            long_ids.append(item.sample.id)
            skipped_long += len(pairs)
            continue
        rows.extend(policy.dpo_row(item.prompt, texts[p.chosen], texts[p.rejected]) for p in pairs)
    return rows, skipped, long_ids, skipped_long


class _ScoredPrompt(BaseModel):
    """One line of `scored.jsonl`: a prompt's k replies and their scores (None: unscored)."""

    id: str
    replies: list[str]
    scores: list[float | None]
    unscored: list[bool]


def _write_scored(
    path: Path,
    items: Sequence[PromptItem],
    replies: Sequence[Sequence[str]],
    scores: Sequence[float | None],
) -> None:
    """Write a round's scored replies (atomically, so a crash leaves no half file)."""
    k = len(replies[0]) if replies else 0
    lines = []
    for index, (item, texts) in enumerate(zip(items, replies, strict=True)):
        own = list(scores[index * k : (index + 1) * k])
        line = _ScoredPrompt(
            id=item.sample.id, replies=list(texts), scores=own, unscored=[s is None for s in own]
        )
        lines.append(line.model_dump_json())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def _read_scored(
    path: Path, items: Sequence[PromptItem], k: int
) -> tuple[list[list[str]], list[float | None]] | None:
    """The replies and flat scores of `scored.jsonl`, or None when absent or not this round's.

    The run's fingerprint (checked before any round) guarantees the data and settings; this
    only checks the file is whole and matches the prompts, and samples again if it is not.
    """
    if not path.is_file():
        return None
    try:
        lines = [
            _ScoredPrompt.model_validate_json(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (OSError, ValidationError) as exc:
        logger.warning("%s is unreadable (%s); sampling and scoring again", path, exc)
        return None
    ids = [it.sample.id for it in items]
    whole = all(len(x.replies) == k and len(x.scores) == k for x in lines)
    if [x.id for x in lines] != ids or not whole:
        logger.warning("%s does not match this round's prompts; sampling again", path)
        return None
    return [x.replies for x in lines], [s for x in lines for s in x.scores]


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
        **config.trainer_arguments(out), beta=config.beta, max_length=config.max_length
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


def evaluate(
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
        in_sample=config.eval_data is None,
        fingerprint=config.eval_fingerprint(),
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
