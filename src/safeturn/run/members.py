"""The model and judges a stored run names, loaded together and closed together.

`safeturn eval` (`commands/_running.py`) and the closed loop (`train/loop_eval.py`) both run
stored runs; this is the one place that turns a run's settings into its members.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safeturn.judges.base import Judge
    from safeturn.models.base import ChatModel
    from safeturn.run.engine import EvalSettings


@asynccontextmanager
async def run_members(
    settings: EvalSettings, *, timeout_s: float | None = None, max_retries: int | None = None
) -> AsyncIterator[tuple[ChatModel, list[Judge]]]:
    """Load the run's model and judges; close them all on exit (prompted judges hold clients).

    `timeout_s` and `max_retries` bound each call to an OpenAI-compatible server, the model's
    and the judges'; None keeps the backend's default.
    """
    from safeturn.judges.specs import parse_judge_spec
    from safeturn.models import load_model

    model = load_model(settings.model, timeout_s=timeout_s, max_retries=max_retries)
    judges: list[Judge] = []
    try:
        judges.extend(
            parse_judge_spec(name, timeout_s=timeout_s, max_retries=max_retries)
            for name in settings.judges
        )
        yield model, judges
    finally:
        await model.aclose()
        for judge in judges:
            await judge.aclose()
