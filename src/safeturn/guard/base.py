"""The moderator interface shared by the library wrapper, the proxy and the evaluation.

A moderator reads the *whole* dialogue so far — every turn, every image — and scores the
intent that has built up across it, because multi-turn attacks spread one harmful request over
turns that each look innocent. `GuardedModel`, the proxy and `safeturn guard eval` depend only
on this Protocol and on `ModerationResult`, never on how a moderator computes its score.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from safeturn.schema import Dialogue
from safeturn.taxonomy import Category

StrategyName = str
"""An attack strategy a moderator can name: a registered attack's name (`attacks.ATTACKS`) or
`none`. A trained model names the strategies it was trained on (`ModeratorModel.strategies`)."""

NO_STRATEGY: StrategyName = "none"
"""What a moderator reports for a dialogue that looks like plain use."""


def strategy_names() -> tuple[StrategyName, ...]:
    """Every strategy a moderator can learn to name: each registered attack by name, then `none`.

    Read from the attack registry, so a strategy added in one file (or by a plugin) is in the
    vocabulary of the next trained model with no edit here; the registry is imported when first
    asked, so `guard` stays importable without building any attack.
    """
    from safeturn.attacks.base import ATTACKS

    return (*sorted(ATTACKS.names()), NO_STRATEGY)


def __getattr__(name: str) -> tuple[StrategyName, ...]:
    """`STRATEGY_NAMES`, kept for importers: `strategy_names()` when first read."""
    if name == "STRATEGY_NAMES":
        return strategy_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    """Scores the harmful intent that a dialogue has built up so far.

    `aclose` releases what it holds; the built-in moderators (`load_moderator`) are also async
    context managers that await it on exit: `async with load_moderator("embedded") as m:`.
    The Protocol asks only for `aclose`, so a plain user object still fits.
    """

    name: str
    threshold: float

    async def screen(self, dialogue: Dialogue) -> ModerationResult:
        """Read every user turn (and image) of `dialogue` and return the cumulative reading."""
        ...

    async def aclose(self) -> None:
        """Release models, threads and connections."""
        ...
