"""`guard[OPTIONS]:MODERATOR+TARGET`: a target model behind a moderator (`GuardedModel`).

OPTIONS (optional, comma-separated): one mode of `inject` (default), `refuse`, `annotate`;
`screen` to screen replies with the `classifier` judge; `open` to fail open. The moderator spec
ends at the first `+`, or, written in parentheses, at `)+` (needed when it has an LLM stage:
`guard:(embedded+llm=openai:URL#judge)+openai:URL#target`); the rest is the target's spec.

The one upward import in `models`: `guard` builds on `models`, never the other way, so it is
imported at call time. A spec string is the only handle `safeturn eval` has on a model, and
the guarded model must be reachable from it to be evaluated.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from safeturn.errors import ModelSpecError
from safeturn.models.base import ChatModel
from safeturn.models.spec import BACKENDS, check_model_spec, load_model
from safeturn.redact import redact_url_credentials

_GUARD_FLAGS = frozenset({"inject", "refuse", "annotate", "screen", "open"})


class GuardParts(NamedTuple):
    """A parsed guard argument."""

    flags: frozenset[str]
    mode: Literal["annotate", "inject", "refuse"]
    moderator: str
    target: str


def split_guard(rest: str) -> GuardParts:
    """`[OPTIONS]:MODERATOR+TARGET` (or `(MODERATOR)+TARGET`) → its parts, or ModelSpecError."""
    flags: set[str] = set()
    if rest.startswith("["):
        inside, sep, rest = rest[1:].partition("]:")
        flags = {f.strip() for f in inside.split(",") if f.strip()}
        if not sep or not flags <= _GUARD_FLAGS:
            known = ", ".join(sorted(_GUARD_FLAGS))
            raise ModelSpecError(f"guard[{inside}]: options must be among {known}")
    modes = flags & {"inject", "refuse", "annotate"}
    if rest.startswith("("):  # a moderator spec with `+` inside (an LLM stage) is bracketed
        moderator_spec, sep, target_spec = rest[1:].partition(")+")
    else:
        moderator_spec, sep, target_spec = rest.partition("+")
    if len(modes) > 1 or not sep or not moderator_spec or not target_spec:
        raise ModelSpecError(
            f"guard:{redact_url_credentials(rest)}: expected guard[MODE,screen,open]:MODERATOR+"
            "TARGET with one mode, e.g. guard[refuse]:embedded+scripted:echo or "
            "guard:(MODERATOR+llm=SPEC)+TARGET"
        )
    mode: Literal["annotate", "inject", "refuse"] = (
        "refuse" if "refuse" in modes else "annotate" if "annotate" in modes else "inject"
    )
    return GuardParts(frozenset(flags), mode, moderator_spec, target_spec)


def _check(rest: str) -> None:
    from safeturn.guard.spec import check_moderator_spec

    parts = split_guard(rest)
    check_moderator_spec(parts.moderator)
    check_model_spec(parts.target)


@BACKENDS.register(
    "guard",
    summary="TARGET behind a MODERATOR: guard[OPTIONS]:MODERATOR+TARGET; OPTIONS: one MODE of "
    "inject (default), refuse, annotate; screen (classifier on replies); open (fail open)",
    example="guard:embedded+openai:http://localhost:8000/v1#Qwen/Qwen2.5-VL-7B-Instruct",
    argument="[OPTIONS]:MODERATOR+TARGET",
    check=_check,
)
def guard(rest: str, *, network: dict[str, Any] | None = None, **options: Any) -> ChatModel:
    """The target (built with the same network settings and options) behind the moderator."""
    from safeturn.guard.guarded import GuardedModel
    from safeturn.guard.spec import load_moderator

    parts = split_guard(rest)
    return GuardedModel(
        load_model(parts.target, **(network or {}), **options),
        load_moderator(parts.moderator),
        mode=parts.mode,
        screen_replies="screen" in parts.flags,
        on_error="open" if "open" in parts.flags else "closed",
    )
