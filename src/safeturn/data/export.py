"""Write a loaded set as safeturn JSONL or as a Hugging Face dataset folder.

JSONL image handling (`images=`):

- `copy` (default): each image file is copied, named by content hash, into `<stem>_images/`
  beside the JSONL and referenced by a relative path, so the export loads back with
  `jsonl:PATH` from anywhere (the loader refuses paths outside the file's folder);
- `embed`: image bytes go into the JSONL (base64), one self-contained file;
- `keep`: paths are written as they are (absolute); load them back with an explicit root.

The Hugging Face export (`save_to_disk`) has one row per sample: the sample fields, the
dialogue and metadata as JSON strings, and the first image in an `Image` column (the dialogue
JSON marks its place with `hf.IMAGE_COLUMN_URL`; further images are embedded as bytes). It
loads back with `hf:PATH`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from safeturn.data.base import LoadedSet
from safeturn.data.hf import IMAGE_COLUMN_URL, import_datasets
from safeturn.schema import Dialogue, ImagePart, Message, Sample, write_jsonl

ImageMode = Literal["copy", "embed", "keep"]


def _samples(data: LoadedSet | Iterable[Sample]) -> list[Sample]:
    return list(data.samples if isinstance(data, LoadedSet) else data)


def _map_images(sample: Sample, change: Any) -> Sample:
    """A copy of `sample` with every image part replaced by `change(index, part)`."""
    counter = iter(range(1_000_000))
    messages = [
        Message(
            role=m.role,
            parts=[change(next(counter), p) if isinstance(p, ImagePart) else p for p in m.parts],
        )
        for m in sample.dialogue.messages
    ]
    return sample.model_copy(update={"dialogue": Dialogue(messages=messages)})


def export_jsonl(
    data: LoadedSet | Iterable[Sample], path: Path, *, images: ImageMode = "copy"
) -> int:
    """Write the samples to `path`; return how many were written."""
    samples = _samples(data)
    if images == "copy":
        folder = path.parent / f"{path.stem}_images"

        def copy(_: int, part: ImagePart) -> ImagePart:
            if part.path is None:
                return part
            source = Path(part.path)
            digest = hashlib.sha256(source.read_bytes()).hexdigest()[:20]
            target = folder / f"{digest}{source.suffix.lower()}"
            if not target.exists():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            return ImagePart(path=str(target.relative_to(path.parent)))

        samples = [_map_images(s, copy) for s in samples]
    elif images == "embed":
        samples = [_map_images(s, _embedded) for s in samples]
    return write_jsonl(samples, path)


def _embedded(_: int, part: ImagePart) -> ImagePart:
    if part.path is None and part.data is not None:
        return part
    if part.is_remote:
        return part
    return ImagePart(data=part.read_bytes())


_HF_COLUMNS: dict[str, str] = {
    "schema_version": "int32",
    "id": "string",
    "source": "string",
    "category": "string",
    "strategy": "string",
    "turns": "int32",
    "harmful": "bool",
    "seed_question": "string",
    "reference_answer": "string",
    "dialogue": "string",
    "metadata": "string",
    "image": "image",
}
"""The Hugging Face export's columns and their value types, in order."""


def export_hf(data: LoadedSet | Iterable[Sample], path: Path) -> int:
    """Save the samples as a `datasets.Dataset` folder at `path`; return the row count."""
    datasets = import_datasets()
    columns: dict[str, list[Any]] = {name: [] for name in _HF_COLUMNS}
    for sample in _samples(data):
        for name, value in _hf_row(sample).items():
            columns[name].append(value)
    features = datasets.Features(
        {
            name: datasets.Image() if kind == "image" else datasets.Value(kind)
            for name, kind in _HF_COLUMNS.items()
        }
    )
    dataset = datasets.Dataset.from_dict(columns, features=features)
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        dataset.save_to_disk(str(path))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return len(dataset)


def _hf_row(sample: Sample) -> dict[str, Any]:
    """One sample as a row of the Hugging Face export.

    The first local image goes to the `image` column and the dialogue marks its place with
    `IMAGE_COLUMN_URL`; further images are embedded as bytes.
    """
    first: list[ImagePart] = []

    def to_row(index: int, part: ImagePart) -> ImagePart:
        if index == 0 and not part.is_remote:
            first.append(part)
            return ImagePart(url=IMAGE_COLUMN_URL)
        return _embedded(index, part)

    stored = _map_images(sample, to_row)
    image_bytes = first[0].read_bytes(label=f"sample {sample.id!r}") if first else None
    row: dict[str, Any] = {name: getattr(sample, name) for name in _SAMPLE_FIELDS}
    return row | {
        "schema_version": sample.version,
        "dialogue": stored.dialogue.model_dump_json(exclude_none=True),
        "metadata": json.dumps(sample.metadata, default=str, ensure_ascii=False),
        "image": None if image_bytes is None else {"bytes": image_bytes, "path": None},
    }


_SAMPLE_FIELDS = (
    "id",
    "source",
    "category",
    "strategy",
    "turns",
    "harmful",
    "seed_question",
    "reference_answer",
)
