"""`scripted:echo|refuse|comply|TABLE.json`: deterministic replies for tests."""

from __future__ import annotations

from typing import Any

from safeturn.models.base import ChatModel
from safeturn.models.scripted import ScriptedModel
from safeturn.models.spec import BACKENDS


def _check(rest: str) -> None:
    ScriptedModel.from_spec(rest)  # a table file is small; reading it is the check


@BACKENDS.register(
    "scripted",
    summary="deterministic replies for tests: echo, refuse, comply, or a JSON table "
    "{user text: reply}",
    example="scripted:refuse",
    argument="echo|refuse|comply|table.json",
    check=_check,
)
def scripted(rest: str, *, network: dict[str, Any] | None = None, **options: Any) -> ChatModel:
    """A `ScriptedModel` (no options: its replies come from the spec)."""
    return ScriptedModel.from_spec(rest)
