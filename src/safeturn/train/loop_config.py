"""`LoopConfig`: one closed-loop experiment, read from YAML with overrides (`safeturn loop`).

Validation happens here, before any model is loaded: unknown strategies, bad turn counts, and
trainer sections (`loop_sections`: typed as their trainer's own config) with a typo, a bad
value or a field the loop sets itself all fail at once with the field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from safeturn.attacks.builder import resolve_strategies, resolve_turns
from safeturn.errors import LoopError as LoopError
from safeturn.errors import SafeturnError
from safeturn.train.config import YamlConfig
from safeturn.train.loop_sections import (
    DreamSection,
    GrpoSection,
    LoopSection,
    SftSection,
    default_sft,
)

REPORT_ONLY = frozenset({"pairwise", "bootstrap"})
"""Config fields that may change between resumes: they affect only the report step."""
SECTIONS = ("sft", "grpo", "dream")
"""The trainer sections; the one named by `trainer` is used."""


class LoopConfig(YamlConfig):
    """One closed-loop experiment. YAML plus overrides via `load`, like `SafeSFTConfig`."""

    load_error: ClassVar[type[SafeturnError]] = LoopError
    label: ClassVar[str] = "loop config"

    model: str = "embedded"
    """`embedded`, `hf:DIR` or a checkpoint DIR: evaluated first, then fine-tuned."""
    data: list[str] = Field(default_factory=lambda: ["demo"])
    """Seed data specs (`figstep:...`, `figstep-benign:...`) or `demo` (the bundled 20 + 20).
    Each sample's `harmful` flag decides harmful seed or benign twin."""
    limit: int | None = Field(default=None, ge=1)
    """First N rows of each data spec (twins stay aligned for FigStep's tiny sets)."""
    text_only: bool = False
    held_out: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Share of seed groups kept out of training and used for the before/after comparison."""
    split_seed: int = 0
    strategies: list[str] = Field(default_factory=lambda: ["typography", "image-grounding"])
    heldout_strategies: list[str] = Field(default_factory=list)
    """Strategies built for the held-out seeds only, so the re-eval also measures attack
    templates that no training dialogue used (the report gives ASR per strategy)."""
    turns: list[int] = Field(default_factory=lambda: [1, 2])
    build_seed: int = 0
    judges: list[str] = Field(default_factory=lambda: ["classifier", "refusal"])
    """The first is the headline judge: it decides failures and every reported rate."""
    max_tokens: int = Field(default=48, ge=1)
    concurrency: int = Field(default=8, ge=1)
    synthesis: Literal["template", "intersafe"] = "template"
    expert: str = "embedded"
    """`intersafe` only: the safety-expert model."""
    attacker: str | None = None
    """`intersafe` only: the decomposing attacker (default: the expert)."""
    include_benign: bool = True
    """Train on benign over-refusals too, against drifting toward refusing everything."""
    benign_anchors: bool = True
    """Also train on benign training twins the model already answers well, with its own
    replies: refusal data alone pushes a small model into refusing the look-alikes too."""
    max_train_dialogues: int | None = Field(default=None, ge=1)
    trainer: Literal["sft", "grpo", "dream"] = "sft"
    sft: SftSection = Field(default_factory=default_sft)
    """`SafeSFTConfig` fields (not model, data or output_dir, which the loop sets). The
    defaults (lr 5e-5, 2 epochs, max_length 512) suit a few dozen failure dialogues; a given
    `sft:` mapping starts from SFT's own defaults."""
    grpo: GrpoSection = Field(default_factory=GrpoSection)
    """`SafeGRPOConfig` fields (not model, data or output_dir)."""
    dream: DreamSection = Field(default_factory=DreamSection)
    """`DreamConfig` fields, with `sft:` and `rlaif:` mappings (not model, output_dir,
    sft_data or rlaif.data)."""
    pairwise: str | None = "classifier"
    """Pairwise judge for after-vs-before win rates on matched samples; None to skip."""
    bootstrap: int = Field(default=1000, ge=100)
    """Paired cluster-bootstrap resamples for the CIs of the deltas."""
    out: Path = Path("runs/loop")

    @field_validator("strategies", mode="before")
    @classmethod
    def _strategies(cls, value: str | list[str]) -> list[str]:
        """Names, `all` or comma-separated names, as `safeturn build` takes them."""
        return resolve_strategies(value)

    @field_validator("heldout_strategies", mode="before")
    @classmethod
    def _heldout_strategies(cls, value: str | list[str]) -> list[str]:
        """Like `strategies`, but may be empty."""
        return resolve_strategies(value) if value else []

    @field_validator("pairwise", mode="before")
    @classmethod
    def _pairwise(cls, value: Any) -> Any:
        """`none` (as typed on a command line) skips the pairwise judge, like null."""
        return None if isinstance(value, str) and value.strip().lower() == "none" else value

    @field_validator("turns", mode="before")
    @classmethod
    def _turns(cls, value: int | str | list[int]) -> list[int]:
        """Turn counts as a list, one number or `"1,2,4"`; sorted and checked against 1..8."""
        return resolve_turns(value)

    @model_validator(mode="after")
    def _consistent(self) -> LoopConfig:
        both = sorted(set(self.strategies) & set(self.heldout_strategies))
        if both:
            raise ValueError(
                f"heldout_strategies {both} are also training strategies; list each only once"
            )
        if not self.judges:
            raise ValueError("judges: give at least one judge spec (the first is the headline)")
        return self

    @property
    def trainer_section(self) -> LoopSection:
        """The section of the configured trainer."""
        section: LoopSection = getattr(self, self.trainer)
        return section

    @property
    def eval_spec(self) -> str:
        """The model spec of the base model (a bare directory becomes `hf:DIR`)."""
        if self.model == "embedded" or ":" in self.model.split("/")[0]:
            return self.model
        return f"hf:{self.model}"

    @property
    def train_model(self) -> str:
        """The base model as the trainers take it: `embedded` or a checkpoint directory."""
        if self.model == "embedded":
            return self.model
        if self.model.startswith("hf:"):
            return self.model[3:]
        if ":" in self.model.split("/")[0]:
            raise LoopError(
                f"model {self.model!r} cannot be fine-tuned here: the loop trains `embedded`, "
                "hf:DIR or a local checkpoint DIR"
            )
        return self.model

    def fingerprint(self) -> dict[str, Any]:
        """The fields that define the experiment (not where it is written or report options).

        A trainer section counts by the values it was given (its defaults are its trainer's),
        as it did when sections were plain mappings, so older `loop.json` files still match.
        """
        data = self.model_dump(mode="json", exclude={"out", *REPORT_ONLY, *SECTIONS})
        for name in SECTIONS:
            data[name] = getattr(self, name).model_dump(mode="json", exclude_unset=True)
        return data
