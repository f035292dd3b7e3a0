"""Turn-aware GRPO on TRL: multi-turn rollouts scored per turn (AM³Safety, DESIGN §5).

TRL's `GRPOTrainer` does the policy-gradient step; safeturn supplies the parts it lacks for
multi-turn safety: `MultiTurnRollout` (its `rollout_func`: the policy writes every assistant
turn, the `env_mask` keeps loss on assistant tokens only), a per-turn judge
(`turn_judges`), and the turn-aware reward computed over each group of `num_generations`
rollouts. `TurnAwareGRPOTrainer` adds the per-turn components of that reward to TRL's logs
(α_t, μ_t and U_t averaged over the groups since the last log) and appends every group's
values to `turn_rewards.jsonl` in the output directory.

Dialogues with images train a VLM through its processor; for a text-only policy (such as the
embedded SmolLM2) images are first read into text by the same OCR bridge the embedded
ChatModel uses, so the policy sees in training what it sees at evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator

from safeturn.errors import ImageError, SchemaError
from safeturn.judges.turn_scores import TurnScores
from safeturn.schema import Dialogue, Sample, read_jsonl
from safeturn.train.config import (
    ModelDtype,
    TrainConfigError,
    TrainerConfig,
    is_vlm,
    load_policy,
    resolve_model_dir,
    save_trained,
)
from safeturn.train.data import SFTDataError
from safeturn.train.rewards import (
    DEFAULT_BETA,
    MISSING_TURN,
    GroupReward,
    TurnAwareReward,
    TurnAwareRewardConfig,
    make_turn_aware_reward,
)
from safeturn.train.rollouts import (
    MultiTurnRollout,
    RolloutError,
    RolloutRecord,
    RolloutSettings,
    answer_points,
    prompt_messages,
    sample_id_of,
)
from safeturn.train.trainers import TRAINERS
from safeturn.train.turn_judges import TurnScorer, load_turn_scorer

if TYPE_CHECKING:
    from trl.trainer.grpo_config import GRPOConfig

logger = logging.getLogger(__name__)

TURN_LOG = "turn_rewards.jsonl"


LossType = Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
"""TRL 1.16's `GRPOConfig.loss_type` values."""


class RewardSettings(BaseModel):
    """λ, τ, β of the turn-aware reward (`TurnAwareRewardConfig`)."""

    lam: float = Field(default=1.0, ge=0)
    tau: float = Field(default=0.5, ge=0, le=1)
    beta: float = Field(default=DEFAULT_BETA, ge=0)
    """Below 1 so that refusing a harmful turn beats complying (see `train/rewards.py`)."""

    def to_config(self) -> TurnAwareRewardConfig:
        """The reward's own dataclass."""
        return TurnAwareRewardConfig(lam=self.lam, tau=self.tau, beta=self.beta)


class SafeGRPOConfig(TrainerConfig):
    """One turn-aware GRPO run; `to_trl()` gives TRL's `GRPOConfig`."""

    data: Path
    """A safeturn JSONL of dialogues; user turns come from it, assistant turns are rolled out."""
    judge: str = "classifier"
    """`classifier` (offline stand-in) or `turn-scores:<model spec>`."""
    history: Literal["own", "reference"] = "own"
    """Each turn sampled on the policy's own history, or on the dataset's reference replies."""
    max_turns: int | None = Field(default=None, ge=1)
    """Keep only each dialogue's first N user turns (None: all)."""
    num_generations: int = Field(default=8, ge=2)
    """Rollouts per dialogue (N); the group of the turn-aware reward."""
    batch_size: int = Field(default=8, ge=1)
    """Rollouts per device per micro-step (× `grad_accum` per optimizer step); a multiple of
    `num_generations` keeps groups whole on each process (the reward needs whole groups)."""
    learning_rate: float = Field(default=1e-6, gt=0)
    # The policy loss and KL settings, all forwarded to TRL by name (`trl_loss_settings`) so
    # that no TRL default decides them silently; docs/training.md says why each value.
    loss_type: LossType = "dapo"
    """TRL's `loss_type`: `dapo` sums token losses over the batch's active tokens (no length
    bias); `grpo` averages per sequence, which favours short rollouts with positive advantage."""
    kl_beta: float = Field(default=0.0, ge=0)
    """TRL's `beta`: weight of the KL penalty to the reference policy (0: no reference model)."""
    kl_bias_correction: bool = True
    """TRL's `use_bias_correction_kl`: KL term times the importance ratio (with kl_beta > 0)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """TRL's `scale_rewards`: advantages divided by each group's reward std (GRPO's own)."""
    epsilon: float = Field(default=0.2, gt=0)
    """TRL's `epsilon`: lower clip range of the importance ratio."""
    epsilon_high: float | None = Field(default=None, gt=0)
    """TRL's `epsilon_high`: upper clip range; None means the same as `epsilon` (sent as such)."""
    num_iterations: int = Field(default=1, ge=1)
    """TRL's `num_iterations` (μ): optimizer passes over each batch of rollouts."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """TRL's `importance_sampling_level`."""
    mask_truncated_completions: bool = False
    """TRL's `mask_truncated_completions`. Off: a rollout whose last reply hit
    `max_turn_tokens` (a long harmful answer, say) must still be pushed down by the loss."""
    max_turn_tokens: int = Field(default=128, ge=1)
    max_length: int = Field(default=2048, ge=16)
    """Tokens per rollout; each dialogue must fit with every reply at max_turn_tokens (checked
    when the trainer is built, naming the dialogue)."""
    temperature: float = Field(default=1.0, gt=0)
    """Greedy rollouts would be identical within a group: zero advantage, nothing learned."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    use_vllm: bool = False
    """Sample turns with vLLM through TRL (`vllm_mode`: `colocate` or `server`); GPU only."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    model_dtype: ModelDtype = "float32"
    """Weights as loaded; `bfloat16` for LoRA on GPUs (the trained adapter stays float32)."""
    save: bool = True
    """Save the final model (or adapter) and processor into `output_dir`."""
    save_steps: int | None = Field(default=None, ge=1)
    """Also save a resumable trainer checkpoint every N steps (`output_dir/checkpoint-N`)."""
    resume: bool = False
    """Continue from the newest `checkpoint-N` in `output_dir` (needs `save_steps`)."""
    merge_lora: bool = False
    """With `lora`, save full merged weights instead of the adapter (loads without peft)."""

    @model_validator(mode="after")
    def _consistent(self) -> SafeGRPOConfig:
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of num_generations="
                f"{self.num_generations}: the turn-aware reward needs each group whole"
            )
        if self.max_turn_tokens >= self.max_length:
            raise ValueError("max_turn_tokens must be smaller than max_length")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(
                f"epsilon_high={self.epsilon_high} must be >= epsilon={self.epsilon} "
                "(or None for the same value)"
            )
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            raise ValueError("loss_type 'luspo' needs importance_sampling_level: sequence")
        return self

    def trl_loss_settings(self) -> dict[str, Any]:
        """The `GRPOConfig` fields of the policy loss and KL term, as this config states them."""
        return {
            "loss_type": self.loss_type,
            "beta": self.kl_beta,
            "use_bias_correction_kl": self.kl_bias_correction,
            "scale_rewards": self.scale_rewards,
            "epsilon": self.epsilon,
            "epsilon_high": self.epsilon if self.epsilon_high is None else self.epsilon_high,
            "num_iterations": self.num_iterations,
            "importance_sampling_level": self.importance_sampling_level,
            "mask_truncated_completions": self.mask_truncated_completions,
        }

    def to_trl(self) -> GRPOConfig:
        """TRL's `GRPOConfig` for rollouts supplied by `MultiTurnRollout`."""
        from trl.trainer.grpo_config import GRPOConfig

        args = self.trainer_arguments(self.output_dir)
        if self.save_steps:
            args.update(save_strategy="steps", save_steps=self.save_steps)
        return GRPOConfig(
            **args,
            num_generations=self.num_generations,
            max_completion_length=self.max_turn_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            use_vllm=self.use_vllm,
            vllm_mode=self.vllm_mode,
            # Rollouts return no sampling logprobs (turns are re-tokenized in the chat layout),
            # so TRL's vLLM importance-sampling correction has nothing to compare against.
            vllm_importance_sampling_correction=False,
            **self.trl_loss_settings(),
        )

    def rollout_settings(self) -> RolloutSettings:
        """How `MultiTurnRollout` samples each turn."""
        return RolloutSettings(
            history=self.history,
            max_turn_tokens=self.max_turn_tokens,
            max_length=self.max_length,
            temperature=self.temperature,
            top_p=self.top_p,
        )


class GRPOResult(BaseModel):
    """What a run did, for the CLI summary and run logs."""

    checkpoint: Path
    model: str
    dialogues: int
    steps: int
    seconds: float
    rewards: list[float]
    """TRL's mean reward per logged step (a resumed run includes the restored steps)."""
    losses: list[float]
    turn_alpha: list[list[float]]
    """Per step logged by this process, the mean α_t for t = 1..T over that step's groups."""
    unscored: int
    """Rollouts the judge could not score (zero advantage)."""
    turn_log: Path

    @property
    def seconds_per_step(self) -> float:
        """Wall time per optimizer step (model loading excluded)."""
        return self.seconds / max(self.steps, 1)


def turn_metrics(groups: Sequence[GroupReward]) -> dict[str, float]:
    """Mean α_t, μ_t (harmlessness), helpfulness and U_t over the groups that reached turn t."""
    out: dict[str, float] = {}
    longest = max((len(g.alpha) for g in groups), default=0)
    for t in range(longest):
        reached = [g for g in groups if len(g.alpha) > t]
        out[f"turn_aware/alpha_t{t + 1}"] = sum(float(g.alpha[t]) for g in reached) / len(reached)
        means = [float(g.mean[t]) for g in reached if math.isfinite(float(g.mean[t]))]
        if means:
            out[f"turn_aware/safe_mean_t{t + 1}"] = sum(means) / len(means)
        helps = [float(g.help_mean[t]) for g in reached if g.help_mean is not None]
        if helps:
            out[f"turn_aware/help_mean_t{t + 1}"] = sum(helps) / len(helps)
        urgencies = [float(g.urgency[t]) for g in reached if math.isfinite(float(g.urgency[t]))]
        if urgencies:
            out[f"turn_aware/urgency_t{t + 1}"] = sum(urgencies) / len(urgencies)
    return out


def _group_row(step: int, group: GroupReward) -> dict[str, Any]:
    def floats(values: Any) -> list[float | None]:
        return [float(v) if math.isfinite(float(v)) else None for v in values]

    return {
        "step": step,
        "rewards": floats(group.rewards),
        "mean": floats(group.mean),
        "var": floats(group.var),
        "urgency": floats(group.urgency),
        "alpha": floats(group.alpha),
        "help_mean": None if group.help_mean is None else floats(group.help_mean),
    }


def multimodal_token_types(
    input_ids: Any, image_id: int | None, video_id: int | None, *, key: str = "token_type_ids"
) -> Any:
    """Token types over a whole sequence: 1 on image-pad tokens, 2 on video-pad tokens.

    Raises:
        RolloutError: The model uses token types but has no known image-pad token, so they
            cannot be rebuilt for images that sit in later turns.
    """
    if image_id is None:
        raise RolloutError(
            f"this VLM's processor returns {key} but has no <|image_pad|> or <|image|> token, "
            "so safeturn cannot mark images in later turns of a rollout; use a model whose "
            "images are placed by an image token (LLaVA, Qwen2-VL/2.5-VL)"
        )
    types = (input_ids == image_id).long()
    if video_id is not None:
        types = types + 2 * (input_ids == video_id).long()
    return types


def _trainer_class() -> type[Any]:
    """`TurnAwareGRPOTrainer`, defined on first use so importing this module skips TRL."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    class TurnAwareGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that logs the turn-aware reward's per-turn components.

        It also rebuilds a VLM's token-type ids over the whole rolled-out sequence: TRL builds
        them from the dataset prompt and pads the completion with zeros, which is wrong when
        later turns (in the completion) hold images, as multi-turn rollouts do.
        """

        def __init__(self, *args: Any, turn_reward: TurnAwareReward, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.safeturn_rollout: MultiTurnRollout = kwargs["rollout_func"]
            self.turn_reward = turn_reward
            self.turn_log = Path(str(self.args.output_dir)) / TURN_LOG
            self.turn_alpha_history: list[list[float]] = []

        def write_turn_groups(self, groups: Sequence[GroupReward]) -> None:
            """Append the groups to `turn_rewards.jsonl` under the current step."""
            self.turn_log.parent.mkdir(parents=True, exist_ok=True)
            with self.turn_log.open("a", encoding="utf-8") as handle:
                for group in groups:
                    row = _group_row(int(self.state.global_step), group)
                    handle.write(json.dumps(row) + "\n")

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            groups = self.turn_reward.drain() if "loss" in logs else []
            if groups:
                metrics = turn_metrics(groups)
                logs.update(metrics)
                logs["turn_aware/unscored"] = float(self.turn_reward.unscored)
                alphas = [v for k, v in metrics.items() if k.startswith("turn_aware/alpha_t")]
                self.turn_alpha_history.append(alphas)
                self.write_turn_groups(groups)
            if "loss" in logs:
                logs.update(self.safeturn_rollout.drain_stats())
            super().log(logs, start_time)

        def _get_per_token_logps_and_entropies(
            self, model: Any, input_ids: Any, *args: Any, **kwargs: Any
        ) -> Any:
            for key in ("token_type_ids", "mm_token_type_ids"):
                if kwargs.get(key) is not None:
                    kwargs[key] = multimodal_token_types(
                        input_ids, self._image_pad_token_id, self._video_pad_token_id, key=key
                    )
            return super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)

    return TurnAwareGRPOTrainer


def load_grpo_samples(config: SafeGRPOConfig, *, vlm: bool) -> list[Sample]:
    """Read, cap and (for a text-only policy) OCR-bridge the training dialogues.

    Raises:
        SFTDataError: The file is missing or empty, a line is invalid, an image is unreadable,
            or ids repeat (rollouts find their sample by id).
    """
    path = config.data
    if not path.is_file():
        raise SFTDataError(f"training data {path} does not exist")
    samples: list[Sample] = []
    seen: set[str] = set()
    bridge = None
    try:
        for sample in read_jsonl(path):
            if sample.id in seen:
                raise SFTDataError(f"{path}: sample id {sample.id!r} appears twice")
            seen.add(sample.id)
            dialogue = sample.dialogue
            if config.max_turns is not None:
                points = answer_points(dialogue)
                if len(points) > config.max_turns:
                    cut = points[config.max_turns - 1] + 1
                    dialogue = Dialogue(messages=dialogue.messages[:cut])
            if dialogue.images and not vlm:
                from safeturn.models.bridge import OcrBridge, bridge_dialogue

                bridge = bridge or OcrBridge()
                dialogue = bridge_dialogue(dialogue, bridge, label=f"sample {sample.id!r}").dialogue
            samples.append(
                sample.model_copy(update={"dialogue": dialogue, "turns": dialogue.n_turns})
            )
    except (SchemaError, ImageError) as exc:
        raise SFTDataError(f"{path}: {exc}") from exc
    if not samples:
        raise SFTDataError(f"{path} holds no samples; GRPO needs dialogues with user turns")
    return samples


def score_rollout(
    scorer: TurnScorer, record: RolloutRecord
) -> list[TurnScores | tuple[float, float]] | None:
    """The judge's scores of a rollout, padded to every planned turn with `MISSING_TURN`.

    A rollout that ran out of `max_length` lacks its last turns (usually the harmful one);
    scoring them as failures keeps it below every rollout that answered them, and gives the
    group all T turns even when every rollout in it stopped early. None: the judge failed.
    """
    scores = scorer(record)
    if scores is None:
        return None
    missing = record.planned_turns - len(scores)
    return [*scores, *[MISSING_TURN] * missing]


def _dataset(samples: Sequence[Sample], *, vlm: bool) -> Any:
    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    for sample in samples:
        row: dict[str, Any] = {"prompt": prompt_messages(sample, structured=vlm)}
        if vlm:
            row["images"] = [
                image.load(label=f"sample {sample.id!r} image {j}")
                for j, image in enumerate(sample.dialogue.images)
            ]
        rows.append(row)
    return Dataset.from_list(rows)


def build_grpo_trainer(config: SafeGRPOConfig, *, scorer: TurnScorer | None = None) -> Any:
    """Load the policy, data and judge, and build the `TurnAwareGRPOTrainer`.

    Args:
        config: The run.
        scorer: A turn scorer to use instead of the one `config.judge` names (tests, or a
            judge object shared with other code).

    Raises:
        TrainConfigError: The model directory does not exist.
        SFTDataError: The data is empty or unreadable.
        RolloutError: A dialogue cannot be rolled out (named).
        ModelSpecError: The judge spec is unknown.
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    model_dir = resolve_model_dir(config.model)
    vlm = is_vlm(model_dir)
    samples = load_grpo_samples(config, vlm=vlm)
    scorer = scorer or load_turn_scorer(config.judge)
    model, processing = load_policy(model_dir, vlm=vlm, dtype=config.model_dtype)
    rollout = MultiTurnRollout({s.id: s for s in samples}, processing, config.rollout_settings())

    def score(prompt: Any, completion: Any, rollout_key: str, **_: Any) -> Any:
        return score_rollout(scorer, rollout.records[rollout_key])

    reward = make_turn_aware_reward(
        score,
        config.reward.to_config(),
        num_generations=config.num_generations,
        group_key=sample_id_of,
    )
    trainer_cls = _trainer_class()
    trainer = trainer_cls(
        model=model,
        reward_funcs=[reward],
        args=config.to_trl(),
        train_dataset=_dataset(samples, vlm=vlm),
        processing_class=processing,
        peft_config=config.peft_config(),
        rollout_func=rollout,
        turn_reward=reward,
    )
    trainer.safeturn_scorer = scorer
    return trainer


def _latest_checkpoint(output_dir: Path) -> Path | None:
    """The `checkpoint-N` folder with the highest N, if any."""
    found = [
        (int(p.name.split("-")[1]), p)
        for p in output_dir.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[1].isdigit()
    ]
    return max(found)[1] if found else None


@TRAINERS.register(
    "grpo",
    summary="turn-aware GRPO on multi-turn rollouts scored per turn (AM³Safety)",
    config_file="configs/train/grpo_cpu_toy.yaml",
    config=SafeGRPOConfig,
)
def train_grpo(config: SafeGRPOConfig, *, trainer: Any = None) -> GRPOResult:
    """Run turn-aware GRPO and save the model (or adapter) with its processor.

    Args:
        config: The run.
        trainer: One built by `build_grpo_trainer(config)`, to inspect it around the run.

    Returns:
        Rewards, losses, per-turn α per logged step and timing.

    Raises:
        TrainConfigError, SFTDataError, RolloutError, ModelSpecError: As `build_grpo_trainer`.
    """
    if trainer is None:
        trainer = build_grpo_trainer(config)
    checkpoint = _latest_checkpoint(config.output_dir) if config.resume else None
    if config.resume and checkpoint is None:
        logger.warning("resume: no checkpoint-N in %s; starting from step 0", config.output_dir)
    if checkpoint is None:
        trainer.turn_log.unlink(missing_ok=True)  # a fresh run's per-group log starts empty
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        trainer.write_turn_groups(trainer.turn_reward.drain())  # groups after the last log
    finally:
        trainer.safeturn_scorer.close()
    seconds = time.perf_counter() - started
    if trainer.state.global_step == 0:
        raise TrainConfigError(
            f"GRPO ran 0 steps: {len(trainer.safeturn_rollout.samples)} dialogues give no full "
            f"batch of batch_size={config.batch_size} x grad_accum={config.grad_accum} rollouts "
            f"({config.num_generations} per dialogue); add dialogues or lower batch_size"
        )
    history = trainer.state.log_history
    rewards = [float(e["reward"]) for e in history if "reward" in e]
    losses = [float(e["loss"]) for e in history if "loss" in e]
    if config.save:
        save_trained(trainer, config.output_dir, merge_lora=config.merge_lora)
    return GRPOResult(
        checkpoint=config.output_dir,
        model=config.model,
        dialogues=len(trainer.safeturn_rollout.samples),
        steps=int(trainer.state.global_step),
        seconds=seconds,
        rewards=rewards,
        losses=losses,
        turn_alpha=trainer.turn_alpha_history,
        unscored=trainer.turn_reward.unscored,
        turn_log=trainer.turn_log,
    )


__all__ = [
    "GRPOResult",
    "RewardSettings",
    "RolloutError",
    "SafeGRPOConfig",
    "TrainConfigError",
    "build_grpo_trainer",
    "score_rollout",
    "train_grpo",
    "turn_metrics",
]
