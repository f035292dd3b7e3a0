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
"""

from __future__ import annotations

import asyncio
import hashlib
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
from safeturn.redact import scrub_secrets
from safeturn.schema import Dialogue, Sample, read_jsonl
from safeturn.synth.risks import Risk, risks_by_sample
from safeturn.train.config import (
    EMBEDDED,
    LoraSettings,
    check_max_steps,
    resolve_model_dir,
    save_trained,
    trainer_args,
)
from safeturn.train.config import read_config as base_read_config
from safeturn.train.config import validated as base_validated
from safeturn.train.policy import Policy

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

ROUNDS_FILE = "rounds.json"
ROUNDS_VERSION = 1
SCORED_FILE = "scored.jsonl"
"""A round's sampled replies and their scores, kept so a resumed round repeats no judge call."""
MIN_COMPLETION_TOKENS = 8
"""Reply tokens a DPO row must keep under `max_length`; fewer teach (almost) nothing."""
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
        check_max_steps(self.max_steps)
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
        """The settings that shape a round's training; a rerun must match them to resume.

        Secrets (URL credentials, API-key fields) are scrubbed, since the fingerprint is stored
        in `rounds.json`. The data and risk files count by content as well as by path, so a
        file edited in place is not silently resumed.
        """
        skip = {"rounds", "eval_data", "eval_judge", "eval_max_new_tokens", "eval_baseline"}
        skip |= {"output_dir", "gen_batch_size"}
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


def file_sha256(path: Path | None) -> str | None:
    """The sha256 of a file's bytes, or None for no file (or a missing one)."""
    if path is None or not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    in_sample: bool = False
    """Scored on the training prompts (no `eval_data`): optimistic, as the policy was trained on
    them; held-out data gives the fair estimate."""
    fingerprint: dict[str, Any] | None = None
    """`RlaifConfig.eval_fingerprint()` when evaluated; a rerun with other eval settings
    evaluates again (None, from an older version, always does)."""


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
    skipped_long: int = 0
    """Pairs left out because their prompt leaves fewer than `MIN_COMPLETION_TOKENS` of
    `max_length` for the reply (TRL would truncate the reply away: loss ln 2, no gradient)."""
    scores_reused: bool = False
    """The replies and scores came from `scored.jsonl` of an interrupted run (no new calls)."""
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
    reevaluated: list[int] = Field(default_factory=list)
    """Reused rounds evaluated again because the eval settings changed (0: the baseline)."""


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
    stored = scrub_secrets(log.fingerprint)  # a file from before redaction still compares
    unknown = [key for key in _HASH_KEYS if key not in stored]
    if unknown:  # written before content hashes were kept: nothing to compare them with
        logger.warning(
            "%s predates content hashes; cannot tell whether the data or risk file changed",
            path,
        )
        stored.update({key: fresh.fingerprint[key] for key in unknown})
    if stored != fresh.fingerprint:
        changed = sorted(
            key
            for key in {*stored, *fresh.fingerprint}
            if stored.get(key) != fresh.fingerprint.get(key)
        )
        raise RlaifError(
            f"{config.output_dir} holds a run with other settings "
            f"({', '.join(_describe_change(key) for key in changed)}); "
            "use another output_dir, or the same settings to resume"
        )
    log = log.model_copy(update={"fingerprint": fresh.fingerprint})
    kept: list[RoundRecord] = []
    for record in log.rounds:  # keep the consecutive finished rounds whose checkpoints exist
        # the layout is fixed, so a moved output folder still resumes
        checkpoint = config.output_dir / f"round-{record.round}"
        if record.round != len(kept) + 1 or not (checkpoint / "config.json").is_file():
            break
        kept.append(record.model_copy(update={"checkpoint": checkpoint}))
    return log.model_copy(update={"rounds": kept})


_HASH_KEYS = ("data_sha256", "risks_sha256")


def _describe_change(key: str) -> str:
    """A fingerprint key as the error shows it: a content hash names its file."""
    if key.endswith("_sha256"):
        return f"{key.removesuffix('_sha256')} (the file's content changed)"
    return key


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
    if config.eval_data is not None:
        evals = load_prompts(config.eval_data, config.risks)
    else:
        logger.warning(
            "no eval_data: every round is evaluated on its %d training prompts, which is "
            "in-sample and optimistic; set eval_data to held-out samples for a fair estimate",
            len(items),
        )
        evals = items
    eval_fp = config.eval_fingerprint()
    log = _read_log(config)
    _write_log(config, log)  # from now on the fingerprint guards the round folders' files
    reused = [r.round for r in log.rounds[: config.rounds]]
    reevaluated: list[int] = []
    start_dir = resolve_model_dir(config.model)
    with asyncio.Runner() as runner:
        owned: list[RiskScorer] = []  # closed at the end; the caller closes what it passed
        judge = scorer or _built(parse_risk_scorer_spec(config.judge), owned)
        eval_judge = eval_scorer or judge
        if eval_scorer is None and config.eval_judge:
            eval_judge = _built(parse_risk_scorer_spec(config.eval_judge), owned)
        try:
            if config.eval_baseline and not _current(log.baseline, eval_fp):
                if log.baseline is not None:
                    reevaluated.append(0)
                say("evaluating the starting policy")
                policy = Policy.load(start_dir)
                log.baseline = _evaluate(policy, evals, eval_judge, config, runner)
                del policy
                _write_log(config, log)
            for index, done in enumerate(log.rounds[: config.rounds]):
                if _current(done.eval, eval_fp):
                    continue
                say(f"round {done.round}: evaluating again (the eval settings changed)")
                stats = _evaluate(Policy.load(done.checkpoint), evals, eval_judge, config, runner)
                log.rounds[index] = done.model_copy(update={"eval": stats})
                reevaluated.append(done.round)
                _write_log(config, log)
            for number in range(len(log.rounds) + 1, config.rounds + 1):
                policy_dir = log.rounds[-1].checkpoint if log.rounds else start_dir
                record = _run_round(
                    _Round(number, policy_dir, config, runner, say), items, evals, judge, eval_judge
                )
                log.rounds.append(record)
                _write_log(config, log)
                _drop_later_scores(config.output_dir, number)
        finally:
            for built in owned:
                runner.run(built.aclose())
    rounds = log.rounds[: config.rounds]
    return RlaifResult(
        checkpoint=rounds[-1].checkpoint,
        output_dir=config.output_dir,
        # a baseline made with other eval settings (and not redone) would mislead
        baseline=log.baseline if _current(log.baseline, eval_fp) else None,
        rounds=rounds,
        reused=reused,
        reevaluated=reevaluated,
    )


def _current(stats: EvalStats | None, fingerprint: dict[str, Any]) -> bool:
    """Whether stored eval numbers were made with the current eval settings."""
    return stats is not None and stats.fingerprint == fingerprint


def _drop_later_scores(output_dir: Path, number: int) -> None:
    """Delete `scored.jsonl` of the rounds after `number`.

    They were sampled from a model that round `number` has just replaced (retrained), so
    reusing them would train on stale, off-policy pairs.
    """
    for path in output_dir.glob(f"round-*/{SCORED_FILE}"):
        suffix = path.parent.name.removeprefix("round-")
        if suffix.isdigit() and int(suffix) > number:
            path.unlink()


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
    """Sample, score, pair, train, save and evaluate one round.

    The scored replies are written to `round-{r}/scored.jsonl` before DPO and reused when an
    interrupted round runs again, so no judge call (possibly a paid one) is repeated.
    """
    import torch

    config, number = ctx.config, ctx.number
    started = time.perf_counter()
    round_dir = config.output_dir / f"round-{number}"
    scored_path = round_dir / SCORED_FILE
    policy = Policy.load(ctx.policy_dir)
    stored = _read_scored(scored_path, items, config.k)
    if stored is not None:
        ctx.say(f"round {number}: reusing the scored replies in {scored_path}")
        replies, scores = stored
        sampled = scored_at = time.perf_counter()
    else:
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
        scored_at = time.perf_counter()
    unscored = sum(1 for score in scores if score is None)
    rows, skipped, long_ids, skipped_long = _preference_rows(policy, items, replies, scores, config)
    if long_ids:
        logger.warning(
            "round %d: %d pair(s) left out: the prompt of %s leaves fewer than %d of "
            "max_length %s tokens for the reply",
            number,
            skipped_long,
            _names(long_ids),
            MIN_COMPLETION_TOKENS,
            config.max_length,
        )
    if not rows and long_ids:
        raise RlaifError(
            f"round {number}: no preference pair fits max_length {config.max_length}: the "
            f"prompt of {_names(long_ids)} leaves fewer than {MIN_COMPLETION_TOKENS} tokens for "
            "the reply; raise max_length or use shorter dialogues"
        )
    if not rows:
        raise RlaifError(
            f"round {number}: no preference pairs; all {len(items)} prompts were skipped "
            f"({unscored} of {len(scores)} replies unscored). Raise k or temperature, or "
            f"lower margin (now {config.margin})"
        )
    ctx.say(f"round {number}: DPO on {len(rows)} pairs")
    train = _train_dpo(policy, ctx.policy_dir, rows, round_dir, config)
    del policy
    ctx.say(f"round {number}: evaluating on {len(evals)} prompts")
    evaluation = _evaluate(Policy.load(round_dir), evals, eval_judge, config, ctx.runner)
    valid = [s for s in scores if s is not None]
    return RoundRecord(
        round=number,
        checkpoint=round_dir,
        prompts=len(items),
        responses=len(scores),
        judge_failures=unscored,
        pairs=len(rows),
        skipped_prompts=skipped,
        skipped_long=skipped_long,
        scores_reused=stored is not None,
        mean_score=sum(valid) / len(valid) if valid else None,
        train=train,
        eval=evaluation,
        seconds_sampling=sampled - started,
        seconds_scoring=scored_at - sampled,
        seconds=time.perf_counter() - started,
    )


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


def _names(ids: Sequence[str], shown: int = 5) -> str:
    """`'a', 'b' and 3 more`: sample ids for a message."""
    text = ", ".join(repr(i) for i in ids[:shown])
    return text + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


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
        **trainer_args(
            output_dir=out,
            max_steps=config.max_steps,
            epochs=config.epochs,
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            grad_accum=config.grad_accum,
            seed=config.seed,
        ),
        beta=config.beta,
        max_length=config.max_length,
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
