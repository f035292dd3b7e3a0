"""`hf:NAME_OR_PATH[:split]`: Hugging Face `datasets` from local disk or the local cache only.

Resolution order: a folder written by `save_to_disk` (`load_from_disk`); another local file or
folder (`load_dataset` with the json/csv/parquet builder); otherwise a hub name, read from the
local cache with offline mode forced on for the call, so nothing is ever downloaded.

Three row layouts are recognised:

- safeturn's own export (`export.export_hf`: a `schema_version` column, the dialogue as JSON
  and the first image in an `Image` column): samples come back as they were written;
- SafeMT's hub layout (`scenario`, `dialogue` as a JSON string, `image_rel_path`): parsed as
  SafeMT records;
- anything else: one user turn from the first of `question, prompt, goal, instruction, query,
  Behavior, text`, with the `image` column (bytes, PIL or a path), an id from `id`,
  `question_id`, `BehaviorID` or the row number, `category` (any source label) and a harmful
  flag from `harmful`, `is_harmful`, `safe` (negated) or `label` (safe/unsafe, 1 = harmful).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from safeturn.data.base import DataSpecError, ImageRef, LoadedSet, SetBuilder, parse_bool
from safeturn.data.jsonl import add_sample
from safeturn.data.registry import DATASETS
from safeturn.data.safemt import add_safemt_record, fill_seed_questions
from safeturn.errors import PrerequisiteError, SchemaError
from safeturn.schema import Dialogue, ImagePart, Message, Sample
from safeturn.taxonomy import Category, guess_category

IMAGE_COLUMN_URL = "safeturn-image-column:"
"""Stands in the exported dialogue JSON for the image stored in the `image` column."""
TEXT_COLUMNS = ("question", "prompt", "goal", "instruction", "query", "Behavior", "text")
_SPLIT = re.compile(r"^[A-Za-z0-9_.+\-\[\]%]+$")
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def import_datasets() -> Any:
    """Import `datasets`, or say how to install it."""
    try:
        import datasets  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PrerequisiteError(
            "hf: data needs the `datasets` package: pip install datasets"
        ) from exc
    return datasets


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """Split `NAME_OR_PATH[:split]`; a path that exists as written is never split."""
    if Path(spec).expanduser().exists():
        return spec, None
    name, sep, split = spec.rpartition(":")
    if sep and name and _SPLIT.match(split):
        return name, split
    return spec, None


@DATASETS.register(
    "hf",
    summary="a local or cached Hugging Face dataset",
    example="hf:/data/my_set:train",
    argument="name[:split]",
    local=False,
)
def load_hf(
    spec: str,
    *,
    text_only: bool = False,
    limit: int | None = None,
    root: Path | None = None,
) -> LoadedSet:
    """Load a local or cached Hugging Face dataset as samples."""
    name, split = parse_hf_spec(spec)
    dataset = _open(name, split)
    local = Path(name).expanduser()
    builder = SetBuilder("hf", text_only=text_only, limit=limit)
    if root is None:
        root = local if local.is_dir() else local.parent
    builder.use(local, root)
    columns = set(dataset.column_names)
    image_feature = type(dataset.features.get("image")).__name__ == "Image"
    if image_feature:
        dataset = dataset.cast_column("image", import_datasets().Image(decode=False))
    if {"schema_version", "dialogue", "id"} <= columns:
        rows_to = _add_exported
    elif {"scenario", "dialogue"} <= columns:
        rows_to = _add_safemt
    elif columns & set(TEXT_COLUMNS):
        rows_to = _add_generic
    else:
        raise SchemaError(
            f"hf:{spec}: no known layout; columns are {', '.join(sorted(columns))} "
            f"(need one of {', '.join(TEXT_COLUMNS)}, or a SafeMT or safeturn export layout)"
        )
    for index, row in enumerate(dataset, start=1):
        if builder.full:
            break
        rows_to(builder, row, index, name)
    fill_seed_questions(builder.loaded)
    return builder.finish()


@contextlib.contextmanager
def _forced_offline(datasets: Any) -> Iterator[None]:
    """Offline mode for one call, whatever the environment said at import time."""
    import huggingface_hub.constants as hub_constants

    saved = (hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    hub_constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _open(name: str, split: str | None) -> Any:
    datasets = import_datasets()
    path = Path(name).expanduser()
    with _forced_offline(datasets):
        try:
            if path.is_dir() and any(
                (path / marker).is_file()
                for marker in ("dataset_dict.json", "state.json", "dataset_info.json")
            ):
                loaded = datasets.load_from_disk(str(path))
            elif path.is_file():
                kind = _FILE_BUILDERS.get(path.suffix.lower())
                if kind is None:
                    raise DataSpecError(f"hf:{name}: cannot read {path.suffix or 'this'} files")
                loaded = datasets.load_dataset(kind, data_files=str(path), split=split or "train")
            elif path.is_dir():
                loaded = datasets.load_dataset(str(path), split=split or "train")
            else:
                loaded = datasets.load_dataset(name, split=split or "train")
        except DataSpecError:
            raise
        except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
            raise DataSpecError(
                f"hf:{name}: not a local dataset and not in the local Hugging Face cache "
                f"(safeturn never downloads; fetch it yourself, then use hf:/its/folder): {exc}"
            ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            split = next(iter(loaded)) if len(loaded) == 1 else "train"
        if split not in loaded:
            raise DataSpecError(f"hf:{name}: no split {split!r}; has {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded


def _image_ref(value: Any) -> ImageRef | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return ImagePart(data=bytes(value["bytes"]))
        path = value.get("path")
        return str(path) if path else None
    if isinstance(value, str):
        return value or None
    if hasattr(value, "save"):  # a decoded PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return ImagePart(data=buffer.getvalue())
    raise SchemaError(f"unsupported image value of type {type(value).__name__}")


def _add_exported(builder: SetBuilder, row: Mapping[str, Any], index: int, name: str) -> None:
    where = builder.where(f"row {index}")
    try:
        fields = {k: v for k, v in row.items() if k not in ("image", "dialogue", "metadata")}
        fields["dialogue"] = json.loads(row["dialogue"])
        fields["metadata"] = json.loads(row.get("metadata") or "{}")
        fields["version"] = fields.pop("schema_version")
        sample = Sample.model_validate({k: v for k, v in fields.items() if v is not None})
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise SchemaError(f"{where}: invalid safeturn export row ({exc})") from exc
    column_image = _image_ref(row.get("image"))
    messages = []
    for message in sample.dialogue.messages:
        parts = []
        for part in message.parts:
            if isinstance(part, ImagePart) and part.url == IMAGE_COLUMN_URL:
                if not isinstance(column_image, ImagePart):
                    raise SchemaError(f"{where}: dialogue refers to an empty image column")
                part = column_image
            parts.append(part)
        messages.append(Message(role=message.role, parts=parts))
    sample = sample.model_copy(update={"dialogue": Dialogue(messages=messages)})
    add_sample(builder, sample, item=f"row {index} ({sample.id})")


def _add_safemt(builder: SetBuilder, row: Mapping[str, Any], index: int, name: str) -> None:
    record = dict(row)
    if "image" in record:
        record["image"] = _image_ref(record["image"])
    add_safemt_record(builder, record, index)


def _add_generic(builder: SetBuilder, row: Mapping[str, Any], index: int, name: str) -> None:
    where = builder.where(f"row {index}")
    text_key = next(k for k in TEXT_COLUMNS if k in row)
    text = row[text_key]
    if not isinstance(text, str) or not text.strip():
        raise SchemaError(f"{where}: {text_key!r} must be a non-empty string")
    raw_id = next(
        (row[k] for k in ("id", "question_id", "BehaviorID") if row.get(k) is not None), index
    )
    sample_id = f"hf-{raw_id}"
    metadata: dict[str, Any] = {"hf_dataset": name, "row": index}
    category: Category | None = None
    label = next((row[k] for k in ("category", "harmful_category") if row.get(k)), None)
    if label is not None:
        metadata["source_category"] = str(label)
        category = guess_category(str(label)) or Category.OTHER
    harmful = _harmful(row, where)
    image = _image_ref(row.get("image"))

    def build(parts: list[ImagePart]) -> Sample:
        return Sample(
            id=sample_id,
            source="hf",
            category=None if category is None else category.value,
            harmful=harmful,
            seed_question=text,
            dialogue=Dialogue(messages=[Message.user(text, images=parts)]),
            metadata=metadata,
        )

    images = [image] if image is not None else []
    builder.add(item=f"row {index} ({raw_id})", sample_id=sample_id, images=images, build=build)


def _harmful(row: Mapping[str, Any], where: str) -> bool | None:
    for key in ("harmful", "is_harmful"):
        if row.get(key) is not None:
            return parse_bool(row[key], where, key)
    if row.get("safe") is not None:
        return not parse_bool(row["safe"], where, "safe")
    label = row.get("label")
    if label is None:
        return None
    if isinstance(label, str) and label.strip().lower() in ("safe", "benign", "unsafe", "harmful"):
        return label.strip().lower() in ("unsafe", "harmful")
    return parse_bool(label, where, "label")
