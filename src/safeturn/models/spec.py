"""Model spec strings → backends, through the `BACKENDS` registry.

One string selects a backend, so a CLI flag, a config file and a database row can all name a
model the same way:

- `embedded`                       the bundled SmolLM2-135M-Instruct (images via OCR)
- `hf:/path/to/model`              any local transformers model directory, VLMs included
- `openai:http://host:8000/v1#m`   any OpenAI-compatible server, model name after `#`; the API
  key comes from `OPENAI_API_KEY`, never from the URL (`user:key@host` is refused: a spec is
  stored with the run, and a key in it would be dropped there or leak)
- `scripted:echo|refuse|comply|/table.json`   deterministic replies for tests
- `guard[OPTIONS]:MODERATOR+TARGET`  TARGET behind a moderator (`safeturn.guard.GuardedModel`);
  OPTIONS (optional, comma-separated): one mode of `inject` (default), `refuse`, `annotate`;
  `screen` to screen replies with the `classifier` judge; `open` to fail open. The moderator
  spec ends at the first `+`, or, written in parentheses, at `)+` (needed when it has an LLM
  stage: `guard:(embedded+llm=openai:URL#judge)+openai:URL#target`); everything after it is
  the target's spec.

Each backend is one module of `safeturn.models.backends` (or a plugin's, declared under the
entry-point group `safeturn.backends`) that registers a factory with `@BACKENDS.register`.
Factories import their heavy dependencies when called, so `import safeturn` stays light. A
backend may give a `check=` callable (metadata) that `check_model_spec` runs on its argument:
it validates a spec without building anything, so a command can refuse a bad one before it
creates a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from safeturn.errors import ModelSpecError
from safeturn.models.base import ChatModel
from safeturn.redact import redact_url_credentials
from safeturn.registry import Entry, Registry, modules_in

BACKENDS: Registry[ChatModel] = Registry(
    "backend", builtins=modules_in("safeturn.models.backends"), error=ModelSpecError
)
"""Every model backend by spec prefix. A factory takes the text after `NAME:` and the
keyword `network` (`timeout_s`/`max_retries` for backends that reach a server), then any
constructor options."""

SpecCheck = Callable[[str], None]
"""A backend's `check=` hook: raise `ModelSpecError` for an argument `load_model` would refuse."""


def load_model(
    spec: str,
    *,
    timeout_s: float | None = None,
    max_retries: int | None = None,
    **options: Any,
) -> ChatModel:
    """Build the backend a spec names; `options` go to its constructor.

    `timeout_s` (per attempt) and `max_retries` reach every OpenAI-compatible backend the spec
    names, a guard's target included; local backends have no network and ignore them. None
    keeps the backend's default (120 s, 5 retries). Bundled backends are async context
    managers: `async with load_model("scripted:echo") as model:` closes the model on exit.
    """
    entry, rest = _split(spec)
    network: dict[str, Any] = {}
    if timeout_s is not None:
        network["timeout_s"] = timeout_s
    if max_retries is not None:
        network["max_retries"] = max_retries
    model = entry.factory(rest, network=network, **options)
    model.name = redact_url_credentials(spec)
    return model


def check_model_spec(spec: str) -> None:
    """Raise `ModelSpecError` for a spec `load_model` would refuse, without building anything.

    Checks the grammar, then runs the backend's own `check=` hook: that the files and folders
    it names exist, that no URL carries credentials; a guard's moderator and target too.
    """
    entry, rest = _split(spec)
    check: SpecCheck | None = entry.metadata.get("check")
    if check is not None:
        check(rest)


def _split(spec: str) -> tuple[Entry[ChatModel], str]:
    """The backend a spec names and its argument; an unknown prefix names the whole spec."""
    if not BACKENDS.names_member(spec):
        raise ModelSpecError(
            f"unknown model spec {redact_url_credentials(spec)!r}: the prefix must be one of "
            f"{', '.join(sorted(BACKENDS.names()))}"
        )
    return BACKENDS.split(spec)
