"""`hf:DIR`: a local transformers model directory; VLMs through AutoProcessor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safeturn.errors import ModelSpecError
from safeturn.models.base import ChatModel
from safeturn.models.spec import BACKENDS


def _check(rest: str) -> None:
    if not Path(rest).expanduser().is_dir():
        raise ModelSpecError(f"hf:{rest}: model directory {Path(rest).expanduser()} does not exist")


@BACKENDS.register(
    "hf",
    summary="a local transformers model directory; VLMs through AutoProcessor and the model's "
    "chat template",
    example="hf:/models/Qwen2.5-VL-3B-Instruct",
    argument="local model directory",
    check=_check,
)
def hf(rest: str, *, network: dict[str, Any] | None = None, **options: Any) -> ChatModel:
    """The model in directory `rest` (torch and transformers are imported here)."""
    from safeturn.models.hf_local import HFLocalModel

    return HFLocalModel(rest, **options)
