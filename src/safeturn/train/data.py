"""Turn a safeturn JSONL into masked training rows, failing on the first sample that can't be.

A trainer that silently drops a bad dialogue trains on a different set than the one asked for,
so every problem (no assistant turn, an unreadable image, images for a text-only model, a turn
that never fits `max_length`) stops the run with the file and sample named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safeturn.errors import ImageError, SchemaError
from safeturn.errors import SFTDataError as SFTDataError
from safeturn.schema import read_jsonl
from safeturn.train.masks import MaskError, build_example


def load_sft_rows(
    path: Path, tokenizer_or_processor: Any, *, max_length: int | None = None
) -> list[dict[str, Any]]:
    """Read samples from `path` and return one `build_example(...).as_dict()` row per sample.

    Raises:
        SFTDataError: The file is missing or empty, or a sample cannot become a training
            example (the message names the file and the sample id).
    """
    if not path.is_file():
        raise SFTDataError(f"training data {path} does not exist")
    rows: list[dict[str, Any]] = []
    try:
        for sample in read_jsonl(path):
            example = build_example(sample, tokenizer_or_processor, max_length=max_length)
            rows.append(example.as_dict())
    except (MaskError, ImageError, SchemaError) as exc:
        raise SFTDataError(f"{path}: {exc}") from exc
    if not rows:
        raise SFTDataError(f"{path} holds no samples; SFT needs dialogues with assistant turns")
    return rows
