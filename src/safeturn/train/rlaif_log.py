"""`rounds.json`: every finished RLAIF round's numbers, and the settings that made them.

A rerun reads it to reuse finished rounds: the stored fingerprint must match the config's (a
content hash counts a data file edited in place), and only consecutive rounds whose checkpoints
exist are kept, so an interrupted run continues from its last whole round.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError

from safeturn.errors import RlaifError
from safeturn.redact import scrub_secrets
from safeturn.train.config import changed_settings, field_defaults

if TYPE_CHECKING:
    from safeturn.train.rlaif import RlaifConfig

logger = logging.getLogger(__name__)

ROUNDS_FILE = "rounds.json"
ROUNDS_VERSION = 1


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


class RoundsLog(BaseModel):
    """`rounds.json`: the settings' fingerprint, the baseline eval and the finished rounds."""

    version: int = ROUNDS_VERSION
    fingerprint: dict[str, Any]
    baseline: EvalStats | None = None
    rounds: list[RoundRecord] = Field(default_factory=list)


def read_log(config: RlaifConfig) -> RoundsLog:
    """The run's `rounds.json`, or a fresh log; finished rounds are kept only if reusable.

    Raises:
        RlaifError: The file is unreadable, newer than this version, or holds a run with other
            settings (the changed ones named).
    """
    path = config.output_dir / ROUNDS_FILE
    fresh = RoundsLog(fingerprint=config.fingerprint())
    if not path.is_file():
        return fresh
    try:
        log = RoundsLog.model_validate_json(path.read_text(encoding="utf-8"))
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
    changed = changed_settings(stored, fresh.fingerprint, field_defaults(type(config)))
    if changed:
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


def write_log(config: RlaifConfig, log: RoundsLog) -> None:
    """Write `rounds.json` atomically."""
    path = config.output_dir / ROUNDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(log.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
