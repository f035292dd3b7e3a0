"""What every trainer's config shares: YAML + CLI overrides, LoRA, and the model to train.

Each trainer has one pydantic config (`SafeSFTConfig`, `SafeGRPOConfig`, ...) so that a YAML
file, the CLI flags and Python callers all go through the same validation and error messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from safeturn.errors import SafeturnError

EMBEDDED = "embedded"
"""The `model` value naming the converted SmolLM2-135M-Instruct checkpoint."""


M = TypeVar("M", bound=BaseModel)


class TrainConfigError(SafeturnError, ValueError):
    """A config file or override is unreadable or inconsistent."""


class TrainConfig(BaseModel):
    """Base of the trainers' configs: strict fields and `load(yaml, **overrides)`."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> Self:
        """Read a YAML config (optional) and apply overrides; `None` overrides are ignored.

        Raises:
            TrainConfigError: The file is unreadable, or the merged values are invalid.
        """
        where = f"config {path}" if path else cls.__name__
        return validated(cls, read_config(path, overrides), where)


def read_config(
    path: Path | None,
    overrides: dict[str, Any],
    *,
    error: type[SafeturnError] = TrainConfigError,
) -> dict[str, Any]:
    """Merge a YAML mapping with overrides (`None` values ignored); the caller validates it.

    Raises:
        TrainConfigError: (or `error`) The file is unreadable or not a mapping.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise error(f"cannot read config {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise error(f"config {path} must be a mapping of field: value")
        values.update(loaded or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def validated(
    model: type[M],
    values: dict[str, Any],
    where: str,
    *,
    error: type[SafeturnError] = TrainConfigError,
) -> M:
    """`model.model_validate(values)`, with validation errors raised as `error`."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise error(f"{where}: {exc}") from exc


def check_max_steps(max_steps: int) -> None:
    """Reject a `max_steps` that is neither positive nor -1 (train by epochs instead)."""
    if max_steps == 0 or max_steps < -1:
        raise ValueError(f"max_steps must be positive, or -1 to use epochs (got {max_steps})")


def trainer_args(
    *,
    output_dir: Path,
    max_steps: int,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    grad_accum: int,
    seed: int,
    bf16: bool = False,
    activation_checkpointing: bool = False,
    logging_steps: int = 1,
) -> dict[str, Any]:
    """The TrainingArguments every safeturn trainer sets alike, for TRL's `XConfig(**...)`.

    One final save (by the caller, not TRL), no reporting integrations, columns kept (our rows
    carry fields TRL's signature check would drop), and no dataloader workers (small CPU runs).
    """
    return {
        "output_dir": str(output_dir),
        "max_steps": max_steps,
        "num_train_epochs": epochs,
        "learning_rate": learning_rate,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "seed": seed,
        "data_seed": seed,
        "bf16": bf16,
        "activation_checkpointing": activation_checkpointing,
        "logging_steps": logging_steps,
        "logging_first_step": True,
        "save_strategy": "no",
        "report_to": "none",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
    }


class LoraSettings(BaseModel):
    """A LoRA adapter (peft) instead of full fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    """Module names to adapt; the default matches Llama-style attention (and CLIP's)."""

    def to_peft(self) -> Any:
        """The peft `LoraConfig` for a causal LM."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )


def resolve_model_dir(model: str) -> Path:
    """The checkpoint directory a `model` value names.

    Raises:
        TrainConfigError: It is neither `embedded` nor an existing directory.
    """
    if model == EMBEDDED:
        from safeturn.models.embedded import embedded_model_dir

        return embedded_model_dir()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise TrainConfigError(
            f"model {model!r} is neither {EMBEDDED!r} nor a local checkpoint directory "
            "(no hub downloads)"
        )
    return path


def is_vlm(model_dir: Path) -> bool:
    """Whether the checkpoint has a vision tower (and so a processor, not just a tokenizer)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    return getattr(config, "vision_config", None) is not None


ModelDtype = Literal["float32", "bfloat16", "float16"]


def load_policy(model_dir: Path, *, vlm: bool, dtype: ModelDtype = "float32") -> tuple[Any, Any]:
    """The model and its processor (VLM) or tokenizer, from local files only.

    float32 by default (CPUs, full fine-tuning); `bfloat16` halves the memory of a LoRA run's
    frozen base weights on GPUs (a 7B VLM: ~15 GB instead of ~30 GB).
    """
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    loader = AutoProcessor if vlm else AutoTokenizer
    processing = loader.from_pretrained(model_dir, local_files_only=True)
    model_cls = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
    model = model_cls.from_pretrained(model_dir, local_files_only=True, dtype=getattr(torch, dtype))
    return model, processing


def save_trained(trainer: Any, output_dir: Path, *, merge_lora: bool) -> None:
    """Save a trainer's model and its tokenizer or processor into `output_dir`.

    A LoRA model is saved as its adapter unless `merge_lora`, which folds the adapter into the
    weights first: a merged checkpoint loads like any other (`hf:`, the next DREAM stage, the
    loop's re-evaluation), an adapter needs peft and its base model.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    model = trainer.model
    if merge_lora and hasattr(model, "merge_and_unload"):
        model.merge_and_unload().save_pretrained(str(output_dir))
    else:
        trainer.save_model(str(output_dir))
    trainer.processing_class.save_pretrained(str(output_dir))
