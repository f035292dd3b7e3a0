"""The settings of one moderator training run (`safeturn guard train`), and its label names.

Every field is recorded in the trained model's metadata, so a shipped model says how it was
made; `train.py` runs the training these settings describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from safeturn.errors import ConfigError
from safeturn.guard.dataset import DEFAULT_CAPS, SeedPlan
from safeturn.guard.model import DEFAULT_MODEL_PATH, POOLS
from safeturn.taxonomy import Category

CATEGORIES = tuple(c.value for c in Category)
LABEL_RULE = (
    "a prefix of a built harmful dialogue is harmful from the first turn whose text, image or "
    "preceding assistant text carries the seed's question, instruction or subject; benign "
    "before that (the same template text as in benign twins); a harmful dialogue written by "
    "people (hh-rlhf) labels only its whole, the earlier prefixes are unlabelled; benign "
    "dialogues never"
)


@dataclass(frozen=True)
class ModeratorTrainConfig:
    """Everything one training run depends on (recorded in the model's metadata)."""

    data_root: Path
    out: Path = DEFAULT_MODEL_PATH
    seed: int = 0
    caps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CAPS))
    image_fraction: float = 0.2
    strategies_per_image_seed: int = 3
    hidden: int = 64
    """Size of the per-turn hidden vector that is pooled over turns."""
    hidden2: int = 32
    dropout: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 1e-3
    max_epochs: int = 40
    patience: int = 5
    batch_size: int = 64
    """Dialogues per batch."""
    category_weight: float = 0.5
    strategy_weight: float = 0.5
    target_fpr: float = 0.05
    """The shipped threshold flags at most this share of benign validation dialogues."""
    band_fprs: tuple[float, float] = (0.20, 0.01)
    """The LLM band: from the threshold at 20 % benign FPR up to the one at 1 %."""
    pools: tuple[str, ...] = ("last", "max")
    """What the second layer reads of the turns so far (see `model.py`)."""
    scorer_hidden: int = 64
    """Hidden units of the harm scorer g shared by the embedding channels."""
    scorer_dropout: float = 0.3
    scorer_weight_decay: float = 1e-2
    natural_harmful_weight: float = 1.0
    """Loss weight of a harmful dialogue written by people (hh-rlhf). Their label is noisy:
    some red-teamers only ask mild questions, and at full weight the scorer learns that any
    casual "how can I ..." is harmful."""
    harm_tuned_layers: int = 2
    """MiniLM layers the harm reader fine-tunes (`harm_encoder.py`); 0 trains none, and the
    harm scorer reads the frozen embeddings alone (the stub-encoder tests do that)."""
    harm_hidden: int = 64
    harm_dropout: float = 0.3
    harm_layer_lr: float = 3e-5
    harm_head_lr: float = 1e-3
    harm_epochs: int = 1
    """One pass: a second moved the XSTest fold by +0.01 AUROC for twice the time on 2 CPUs."""
    harm_batch: int = 16
    """Dialogues per step of the harm reader."""
    leave_out: tuple[str, ...] = ()
    """Sources left out of every split (leave-one-source-out runs)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.image_fraction <= 1.0:
            raise ConfigError(f"image_fraction must be in [0, 1], got {self.image_fraction}")
        if not 0.0 < self.target_fpr < 1.0:
            raise ConfigError(f"target_fpr must be in (0, 1), got {self.target_fpr}")
        unknown = sorted(set(self.caps) - set(DEFAULT_CAPS))
        if unknown:
            raise ConfigError(f"unknown seed sources {unknown}; known: {sorted(DEFAULT_CAPS)}")
        if not 0 <= self.harm_tuned_layers <= 6 or self.harm_epochs < 1 or self.harm_batch < 1:
            raise ConfigError(
                "harm_tuned_layers must be in [0, 6] (MiniLM has 6), harm_epochs and harm_batch "
                f">= 1; got {self.harm_tuned_layers}, {self.harm_epochs}, {self.harm_batch}"
            )
        if not self.pools or any(p not in POOLS for p in self.pools):
            raise ConfigError(f"pools must be a non-empty subset of {POOLS}, got {self.pools}")

    def plan(self) -> SeedPlan:
        """The seed plan of this run."""
        return SeedPlan(
            seed=self.seed,
            caps=dict(self.caps),
            image_fraction=self.image_fraction,
            strategies_per_image_seed=self.strategies_per_image_seed,
        )
