"""Cold-start refusal SFT on TRL with safeturn's own assistant-only masks (DESIGN §5).

TRL's `assistant_only_loss` needs `{% generation %}` markers, which SmolLM2's template and most
VLM templates lack, so the rows come from `build_example` (labels already -100 outside
assistant turns) and TRL's dataset preparation is skipped: it would re-tokenize and replace
those labels. `remove_unused_columns=False` keeps `attention_mask` and `pixel_values`, which
TRL's default signature columns would drop.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, model_validator

from safeturn.train.config import (
    EMBEDDED,
    LoraSettings,
    TrainConfig,
    TrainConfigError,
    check_max_steps,
    is_vlm,
    load_policy,
    resolve_model_dir,
    save_trained,
    trainer_args,
)
from safeturn.train.data import load_sft_rows
from safeturn.train.masks import AssistantOnlyCollator

__all__ = [
    "EMBEDDED",
    "LoraSettings",
    "SFTConfigError",
    "SFTResult",
    "SafeSFTConfig",
    "build_sft_trainer",
    "resolve_model_dir",
    "train_sft",
]

if TYPE_CHECKING:
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

logger = logging.getLogger(__name__)

SFTConfigError = TrainConfigError
"""The SFT name for a config error (the same class as every trainer's)."""


class SafeSFTConfig(TrainConfig):
    """One SFT run: model, data, optimisation; `to_trl()` gives TRL's `SFTConfig`."""

    model: str = EMBEDDED
    """A local checkpoint directory, or `embedded` for the converted SmolLM2."""
    data: Path
    """A safeturn JSONL of samples whose dialogues contain assistant turns."""
    output_dir: Path
    max_steps: int = -1
    """Optimizer steps; -1 trains for `epochs` instead."""
    epochs: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=2e-5, gt=0)
    batch_size: int = Field(default=2, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_length: int | None = Field(default=1024, ge=8)
    """Dialogues are cut at message boundaries to fit (see `build_example`)."""
    seed: int = 0
    warmup_steps: int = Field(default=0, ge=0)
    bf16: bool = False
    """bf16 autocast; weights are loaded in float32 either way. Off by default for CPUs."""
    gradient_checkpointing: bool = False
    """Saves memory at ~30% more compute; TRL turns it on by default, we don't (small models)."""
    lora: LoraSettings | None = None
    merge_lora: bool = False
    """With `lora`, save full merged weights instead of the adapter (loads without peft)."""
    logging_steps: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> SafeSFTConfig:
        check_max_steps(self.max_steps)
        return self

    def to_trl(self) -> SFTConfig:
        """TRL's `SFTConfig`, set up for pre-masked rows and a single final save."""
        from trl.trainer.sft_config import SFTConfig

        return SFTConfig(
            **trainer_args(
                output_dir=self.output_dir,
                max_steps=self.max_steps,
                epochs=self.epochs,
                learning_rate=self.learning_rate,
                batch_size=self.batch_size,
                grad_accum=self.grad_accum,
                seed=self.seed,
                bf16=self.bf16,
                activation_checkpointing=self.gradient_checkpointing,
                logging_steps=self.logging_steps,
            ),
            warmup_steps=self.warmup_steps,
            max_length=self.max_length,
            dataset_kwargs={"skip_prepare_dataset": True},
        )

    def peft_config(self) -> Any:
        """The peft `LoraConfig`, or None for full fine-tuning."""
        return None if self.lora is None else self.lora.to_peft()


class SFTResult(BaseModel):
    """What a run did, for the CLI summary and run logs."""

    checkpoint: Path
    model: str
    examples: int
    steps: int
    seconds: float
    initial_loss: float
    final_loss: float
    trainable_params: int
    total_params: int
    lora: bool

    @property
    def seconds_per_step(self) -> float:
        """Wall time per optimizer step (model loading excluded)."""
        return self.seconds / max(self.steps, 1)


def build_sft_trainer(config: SafeSFTConfig) -> SFTTrainer:
    """Load the model and data and build TRL's `SFTTrainer` (data errors come before loading).

    Raises:
        SFTConfigError: The model directory does not exist.
        SFTDataError: The data is empty or a sample cannot be masked.
    """
    from datasets import Dataset
    from transformers import AutoProcessor, AutoTokenizer
    from trl.trainer.sft_trainer import SFTTrainer

    model_dir = resolve_model_dir(config.model)
    vlm = is_vlm(model_dir)
    loader = AutoProcessor if vlm else AutoTokenizer
    processing = loader.from_pretrained(model_dir, local_files_only=True)
    rows = load_sft_rows(config.data, processing, max_length=config.max_length)
    dataset = Dataset.from_list(rows)
    model, _ = load_policy(model_dir, vlm=vlm)
    return SFTTrainer(
        model=model,
        args=config.to_trl(),
        data_collator=AssistantOnlyCollator(processing),
        train_dataset=dataset,
        processing_class=processing,
        peft_config=config.peft_config(),
    )


def train_sft(config: SafeSFTConfig, *, trainer: SFTTrainer | None = None) -> SFTResult:
    """Fine-tune on assistant turns only and save the model (or adapter) with its processor.

    Args:
        config: The run.
        trainer: One already built by `build_sft_trainer(config)`, to inspect it around the
            run; built here when omitted.

    Returns:
        Losses, steps and timing; `checkpoint` reloads with transformers (and peft for LoRA).

    Raises:
        SFTConfigError: The model directory does not exist.
        SFTDataError: The data is empty or a sample cannot be masked.
    """
    if trainer is None:
        trainer = build_sft_trainer(config)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    if not losses or not all(math.isfinite(x) for x in losses):
        logger.warning("SFT logged non-finite or no losses: %s", losses)
    rows: Any = trainer.train_dataset
    model: Any = trainer.model
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    save_trained(trainer, config.output_dir, merge_lora=config.merge_lora)
    return SFTResult(
        checkpoint=config.output_dir,
        model=config.model,
        examples=len(rows),
        steps=int(trainer.state.global_step),
        seconds=seconds,
        initial_loss=losses[0] if losses else math.nan,
        final_loss=losses[-1] if losses else math.nan,
        trainable_params=trainable,
        total_params=total,
        lora=config.lora is not None,
    )
