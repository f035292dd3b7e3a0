"""What every trainer's config shares: YAML + `--set` overrides, the optimiser, LoRA, the model.

Each trainer has one pydantic config (`SafeSFTConfig`, `SafeGRPOConfig`, `RlaifConfig`, ...)
so that a YAML file, the CLI and Python callers all go through the same validation and error
messages. They share two bases: `YamlConfig` (strict fields and one `load`, also used by the
DREAM and loop configs) and `OptimSettings` (the optimiser and TrainingArguments fields, turned
into TRL's keyword arguments in one place, `trainer_arguments`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from safeturn.errors import SafeturnError
from safeturn.errors import TrainConfigError as TrainConfigError
from safeturn.train.overrides import apply_sets

EMBEDDED = "embedded"
"""The `model` value naming the converted SmolLM2-135M-Instruct checkpoint."""


M = TypeVar("M", bound=BaseModel)


class YamlConfig(BaseModel):
    """Base of every training config: strict fields and `load(yaml, sets, **overrides)`."""

    model_config = ConfigDict(extra="forbid")

    load_error: ClassVar[type[SafeturnError]] = TrainConfigError
    """The error `load` raises; each config keeps the class its callers already catch."""
    label: ClassVar[str] = ""
    """How messages name a config given without a file (default: the class name)."""

    @classmethod
    def load(cls, path: Path | None = None, *, sets: Sequence[str] = (), **overrides: Any) -> Self:
        """Read a YAML config (optional), apply overrides, then `--set KEY=VALUE` items.

        `None` overrides are ignored. A `set` item's key may be dotted (`reward.beta=0.25`,
        `sft.max_steps=3`) and its value is parsed as YAML (`1e-5`, `true`, `null`, `[a, b]`).

        Raises:
            The config's `load_error`: the file is unreadable, a `--set` key is not a field
            (named), or the merged values are invalid (each bad field named).
        """
        error = cls.load_error
        where = f"config {path}" if path else (cls.label or cls.__name__)
        values = read_config(path, overrides, error=error)
        apply_sets(cls, values, sets, error=error)
        try:
            return validated(cls, values, where, error=error)
        except error:
            raise
        except SafeturnError as exc:  # raised by a field's own validator (e.g. a strategy name)
            raise error(f"{where}: {exc}") from exc


def read_config(
    path: Path | None,
    overrides: Mapping[str, Any],
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
    values: Mapping[str, Any],
    where: str,
    *,
    error: type[SafeturnError] = TrainConfigError,
) -> M:
    """`model.model_validate(values)`, with validation errors raised as `error`."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise error(f"{where}: {exc}") from exc


def changed_settings(
    stored: Mapping[str, Any], current: Mapping[str, Any], defaults: Mapping[str, Any]
) -> list[str]:
    """The keys whose stored and current settings differ, sorted.

    A key the stored settings lack counts as unchanged while its current value is the default:
    a field added since the settings were stored changes nothing until it is set.
    """
    return sorted(
        key
        for key in {*stored, *current}
        if stored.get(key) != current.get(key)
        and not (key not in stored and current.get(key) == defaults.get(key))
    )


def field_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Each optional field's default, as `changed_settings` compares stored settings with."""
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
        if not field.is_required()
    }


def check_max_steps(max_steps: int) -> None:
    """Reject a `max_steps` that is neither positive nor -1 (train by epochs instead)."""
    if max_steps == 0 or max_steps < -1:
        raise ValueError(f"max_steps must be positive, or -1 to use epochs (got {max_steps})")


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


class OptimSettings(BaseModel):
    """The optimiser and TrainingArguments fields every trainer shares (SFT, GRPO, DPO).

    A trainer whose default differs redeclares only that field (GRPO's learning rate, say);
    `trainer_arguments` is the one place they reach TRL.
    """

    model_config = ConfigDict(extra="forbid")

    max_steps: int = -1
    """Optimizer steps; -1 trains for `epochs` instead."""
    epochs: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=2e-5, gt=0)
    batch_size: int = Field(default=2, ge=1)
    """Rows (dialogues, rollouts or pairs) per device batch."""
    grad_accum: int = Field(default=1, ge=1)
    seed: int = 0
    warmup_steps: int = Field(default=0, ge=0)
    bf16: bool = False
    """bf16 autocast; weights are loaded in float32 unless a trainer says otherwise. Off by
    default for CPUs."""
    gradient_checkpointing: bool = False
    """Saves memory at ~30% more compute; TRL turns it on by default, we don't (small models)."""
    logging_steps: int = Field(default=1, ge=1)
    lora: LoraSettings | None = None
    """Train a LoRA adapter (peft) instead of every weight."""

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> Self:
        check_max_steps(self.max_steps)
        return self

    def trainer_arguments(self, output_dir: Path) -> dict[str, Any]:
        """The TrainingArguments every safeturn trainer sets alike, for TRL's `XConfig(**...)`.

        One final save (by the caller, not TRL), no reporting integrations, columns kept (our
        rows carry fields TRL's signature check would drop), and no dataloader workers.
        """
        return {
            "output_dir": str(output_dir),
            "max_steps": self.max_steps,
            "num_train_epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "seed": self.seed,
            "data_seed": self.seed,
            "warmup_steps": self.warmup_steps,
            "bf16": self.bf16,
            "activation_checkpointing": self.gradient_checkpointing,
            "logging_steps": self.logging_steps,
            "logging_first_step": True,
            "save_strategy": "no",
            "report_to": "none",
            "remove_unused_columns": False,
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": False,
        }

    def peft_config(self) -> Any:
        """The peft `LoraConfig`, or None for full fine-tuning."""
        return None if self.lora is None else self.lora.to_peft()


class TrainerConfig(OptimSettings, YamlConfig):
    """Base of a trainer's own config: the optimiser, the model to train, where it is saved."""

    model: str = EMBEDDED
    """A local checkpoint directory, or `embedded` for the converted SmolLM2."""
    output_dir: Path


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
