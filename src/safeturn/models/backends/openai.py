"""`openai:URL#MODEL`: any OpenAI-compatible server (vLLM, SGLang, Ollama, hosted APIs)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from safeturn.errors import ModelSpecError
from safeturn.models.base import ChatModel
from safeturn.models.spec import BACKENDS
from safeturn.redact import redact_url_credentials


def split_openai(rest: str) -> tuple[str, str]:
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


def _check(rest: str) -> None:
    split_openai(rest)


@BACKENDS.register(
    "openai",
    summary="any OpenAI-compatible server (vLLM, SGLang, Ollama, hosted APIs)",
    example="openai:http://localhost:8000/v1#Qwen/Qwen2.5-VL-7B-Instruct",
    argument="URL#model",
    check=_check,
)
def openai(rest: str, *, network: dict[str, Any] | None = None, **options: Any) -> ChatModel:
    """A client for the server at the URL, asking for the model after `#`."""
    from safeturn.models.openai_compat import OpenAICompatModel

    base_url, model = split_openai(rest)
    return OpenAICompatModel(base_url=base_url, model=model, **{**(network or {}), **options})
