"""The loop config's trainer sections (`sft:`, `grpo:`, `dream:`), typed and checked at load.

Each section is its trainer's own config minus what the loop sets itself (the model, the
training data `train.jsonl`, the output `checkpoint/`), so a typo or a bad value in any section
fails when the loop config loads, naming the field, not after the first (possibly hours-long)
evaluation. The fields the loop sets are kept out of dumps and refused in input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from safeturn.errors import LoopError
from safeturn.train.config import EMBEDDED, YamlConfig, validated
from safeturn.train.dream import DreamConfig
from safeturn.train.grpo import SafeGRPOConfig
from safeturn.train.rlaif import RlaifSettings
from safeturn.train.sft import SafeSFTConfig

_SET_BY_LOOP = "the loop sets the model, train.jsonl and checkpoint/"


class LoopSection(BaseModel):
    """A trainer section: refuses the fields the loop sets, and builds the trainer's config."""

    reserved: ClassVar[tuple[str, ...]] = ("model", "data", "output_dir")

    @model_validator(mode="before")
    @classmethod
    def _not_set_by_the_loop(cls, values: Any) -> Any:
        if isinstance(values, dict):
            taken = [key for key in cls.reserved if key in values]
            if taken:
                verb = "is" if len(taken) == 1 else "are"
                raise ValueError(f"{', '.join(taken)} {verb} set by the loop ({_SET_BY_LOOP})")
        return values

    def trainer_config(self, *, model: str, data: Path, output_dir: Path) -> YamlConfig:
        """The trainer's config for the loop's model, training data and checkpoint folder."""
        raise NotImplementedError


def _build(model: type[YamlConfig], values: dict[str, Any], name: str) -> YamlConfig:
    return validated(model, values, f"loop config, {name} section", error=LoopError)


class _MergedTrainerSection(LoopSection):
    """A section of a one-stage trainer: its config, on the loop's files, saving merged weights.

    The re-eval loads the checkpoint with `hf:`, so a LoRA run must save merged weights.
    """

    trainer: ClassVar[type[YamlConfig]]
    section: ClassVar[str]
    model: str = Field(default=EMBEDDED, exclude=True)
    data: Path = Field(default=Path("train.jsonl"), exclude=True)
    output_dir: Path = Field(default=Path("checkpoint"), exclude=True)

    def trainer_config(self, *, model: str, data: Path, output_dir: Path) -> YamlConfig:
        """The trainer's config with the loop's model, data and output_dir, and `merge_lora`."""
        values = {**self.model_dump(), "model": model, "data": data, "output_dir": output_dir}
        return _build(self.trainer, {**values, "merge_lora": True}, self.section)


class SftSection(_MergedTrainerSection, SafeSFTConfig):
    """`SafeSFTConfig` fields but model, data and output_dir."""

    trainer: ClassVar[type[YamlConfig]] = SafeSFTConfig
    section: ClassVar[str] = "sft"


class GrpoSection(_MergedTrainerSection, SafeGRPOConfig):
    """`SafeGRPOConfig` fields but model, data and output_dir."""

    trainer: ClassVar[type[YamlConfig]] = SafeGRPOConfig
    section: ClassVar[str] = "grpo"


class RlaifSection(LoopSection, RlaifSettings):
    """`RlaifSettings` but data: DREAM's rounds take their prompts from train.jsonl."""

    reserved: ClassVar[tuple[str, ...]] = ("data",)
    data: Path = Field(default=Path("train.jsonl"), exclude=True)


class DreamSection(LoopSection, DreamConfig):
    """`DreamConfig` fields but model, output_dir, sft_data and rlaif.data."""

    reserved: ClassVar[tuple[str, ...]] = ("model", "output_dir", "sft_data")
    model: str = Field(default=EMBEDDED, exclude=True)
    output_dir: Path = Field(default=Path("checkpoint"), exclude=True)
    sft_data: Path | None = Field(default=None, exclude=True)
    rlaif: RlaifSection = Field(default_factory=RlaifSection)

    def trainer_config(self, *, model: str, data: Path, output_dir: Path) -> YamlConfig:
        """`DreamConfig`: its SFT stage on train.jsonl, its RLAIF rounds on the same prompts.

        Without a risk file its judge scores replies without disentangled risks.
        """
        rlaif = {**self.rlaif.model_dump(), "data": data}
        values = {**self.model_dump(), "model": model, "output_dir": output_dir}
        return _build(DreamConfig, {**values, "sft_data": data, "rlaif": rlaif}, "dream")


def default_sft() -> SftSection:
    """The loop's SFT defaults, for a few dozen failure dialogues (SFT's own barely move)."""
    return SftSection(learning_rate=5e-5, epochs=2.0, max_length=512)
