"""The moderator interface shared by the library wrapper, the proxy and the evaluation.

A moderator reads the *whole* dialogue so far — every turn, every image — and scores the
intent that has built up across it, because multi-turn attacks spread one harmful request over
turns that each look innocent. `GuardedModel`, the proxy and `safeturn guard eval` depend only
on this Protocol and on `ModerationResult`, never on how a moderator computes its score.
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args, runtime_checkable

from pydantic import BaseModel, Field

from safeturn.schema import Dialogue
from safeturn.taxonomy import Category

StrategyName = Literal[
    "escalation",
    "fake-compliance",
    "image-grounding",
    "image-description",
    "typography",
    "decomposition",
    "none",
]
"""The attack strategies a moderator can name (the `attacks/` registry names, plus `none`)."""

STRATEGY_NAMES: tuple[StrategyName, ...] = get_args(StrategyName)

Stage = Literal["fast", "llm"]


class ModerationResult(BaseModel):
    """A moderator's reading of a dialogue after its latest user turn."""

    risk: float = Field(ge=0.0, le=1.0)
    """Calibrated probability that the cumulative intent of the user turns is harmful."""
    flagged: bool
    """Whether `risk` reached `threshold`."""
    threshold: float = Field(ge=0.0, le=1.0)
    category: Category | None = None
    """The most likely risk category; None when the dialogue is not flagged."""
    category_score: float | None = None
    strategy: StrategyName = "none"
    """The suspected attack strategy; `none` when the dialogue looks like plain use."""
    strategy_score: float | None = None
    turn_risks: list[float] = Field(default_factory=list)
    """Cumulative risk after each user turn (1-based turn t is index t-1)."""
    earliest_turn: int | None = None
    """The first user turn (1-based) at which the cumulative risk crossed `threshold`."""
    rationale: str = ""
    """A short, content-free explanation (which signals fired), safe to log."""
    policy: str | None = None
    """The safety policy text to inject for `category`; None when nothing is flagged."""
    stage: Stage = "fast"
    """Which stage decided: the embedded fast stage, or the optional LLM stage."""
    images_screened: bool = True
    """False when some images were not analysed (deadline passed, request cancelled, image
    pool full): the reading treats them as unseen, so a guard must not trust it alone."""
    unscreened_images: int = 0
    """How many distinct images were read as unseen for that reason."""


@runtime_checkable
class Moderator(Protocol):
    """Scores the harmful intent that a dialogue has built up so far."""

    name: str
    threshold: float

    async def screen(self, dialogue: Dialogue) -> ModerationResult:
        """Read every user turn (and image) of `dialogue` and return the cumulative reading."""
        ...

    async def aclose(self) -> None:
        """Release models, threads and connections."""
        ...
