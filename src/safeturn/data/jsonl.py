"""safeturn's own JSONL format (one `Sample` per line, see `schema.write_jsonl`).

Relative image paths resolve under the root (default: the file's folder) and may not leave it.
A sample whose image file is missing is reported, not kept; `text_only=True` strips image
parts instead. A line that is not a valid sample (bad JSON, a schema error, a repeated id)
fails alone: it is listed in `LoadedSet.errors` as `FILE:line-N` and the other lines load.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from safeturn.data.base import DataSpecError, ImageRef, LoadedSet, SetBuilder
from safeturn.data.registry import DATASETS
from safeturn.errors import SchemaError
from safeturn.schema import Dialogue, ImagePart, Message, Sample


@DATASETS.register(
    "jsonl",
    summary="safeturn's own JSONL samples",
    example="jsonl:samples.jsonl",
    argument="path",
)
def load_jsonl(
    path: Path,
    *,
    text_only: bool = False,
    limit: int | None = None,
    root: Path | None = None,
) -> LoadedSet:
    """Load a safeturn JSONL file; `source` of the set is `jsonl`, each sample keeps its own."""
    if not path.is_file():
        raise DataSpecError(f"{path}: no such file")
    builder = SetBuilder("jsonl", text_only=text_only, limit=limit)
    builder.use(path, root)
    with path.open("rb") as fh:  # bytes: a line that is not UTF-8 fails alone too
        for lineno, line in enumerate(fh, start=1):
            if builder.full:
                break
            if not line.strip():
                continue
            with builder.one_item(f"{path.name}:line-{lineno}"):
                sample = parse_line(line, where=f"{path}:{lineno}")
                add_sample(builder, sample, item=f"line {lineno} ({sample.id})")
    return builder.finish()


def parse_line(line: bytes, *, where: str) -> Sample:
    """One JSONL line as a `Sample`, or a `SchemaError` that names `where` and the fields."""
    try:
        return Sample.model_validate(json.loads(line))
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise SchemaError(f"{where}: invalid sample ({fields})") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise SchemaError(f"{where}: invalid JSON ({exc})") from exc


def add_sample(builder: SetBuilder, sample: Sample, *, item: object) -> None:
    """Add an already-built sample, re-attaching its images through the builder's rules."""
    refs: list[ImageRef] = [img for m in sample.dialogue.messages for img in m.images]

    def build(parts: list[ImagePart]) -> Sample:
        if not refs:  # no image to re-attach or leave out: the sample as it was read
            return sample
        remaining = iter(parts)
        messages = [
            Message(
                role=m.role,
                parts=[
                    next(remaining) if isinstance(p, ImagePart) else p
                    for p in m.parts
                    if not (builder.text_only and isinstance(p, ImagePart))
                ],
            )
            for m in sample.dialogue.messages
        ]
        return sample.model_copy(
            update={"dialogue": Dialogue(messages=messages), "metadata": dict(sample.metadata)}
        )

    builder.add(item=item, sample_id=sample.id, images=refs, build=build)
