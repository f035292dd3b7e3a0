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

from pydantic import BaseModel, Field

from safeturn.train.config import (
    EMBEDDED,
    LoraSettings,
    TrainConfigError,
    TrainerConfig,
    is_vlm,
    load_policy,
    resolve_model_dir,
    save_trained,
)
from safeturn.train.data import load_sft_rows
from safeturn.train.masks import AssistantOnlyCollator
from safeturn.train.trainers import TRAINERS

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


class SafeSFTConfig(TrainerConfig):
    """One SFT run: model, data, optimisation; `to_trl()` gives TRL's `SFTConfig`."""

    data: Path
    """A safeturn JSONL of samples whose dialogues contain assistant turns."""
    max_length: int | None = Field(default=1024, ge=8)
    """Dialogues are cut at message boundaries to fit (see `build_example`)."""
    merge_lora: bool = False
    """With `lora`, save full merged weights instead of the adapter (loads without peft)."""

    def to_trl(self) -> SFTConfig:
        """TRL's `SFTConfig`, set up for pre-masked rows and a single final save."""
        from trl.trainer.sft_config import SFTConfig

        return SFTConfig(
            **self.trainer_arguments(self.output_dir),
            max_length=self.max_length,
            dataset_kwargs={"skip_prepare_dataset": True},
        )


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


@TRAINERS.register(
    "sft",
    summary="refusal SFT with loss on assistant turns only (cold start)",
    config_file="configs/train/sft_cold_start.yaml",
    config=SafeSFTConfig,
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
