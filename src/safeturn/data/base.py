"""What every loader returns, and the shared plumbing that makes all loaders behave alike.

Rules every loader follows (through `SetBuilder`):

- image paths resolve under the data root with `resolve_under_root`; a path that escapes it
  raises `ImageError` naming the file and the item;
- a referenced image that does not exist keeps its sample out of `samples` and is listed in
  `missing_images`; with `text_only=True` image parts are left out on purpose
  (`metadata["image_omitted"] = True`) and nothing is reported missing;
- malformed input raises `SchemaError` naming the file and the item (id or row number), except
  in line-based files (JSONL): there a malformed line fails alone, read inside
  `SetBuilder.one_item`; it is listed in `errors` with its line number and the rest loads;
- `limit` caps the number of samples considered, kept or reported missing.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from safeturn.errors import DataSpecError as DataSpecError
from safeturn.errors import ImageError, SchemaError
from safeturn.schema import ImagePart, Sample, resolve_under_root
from safeturn.taxonomy import Category, UnknownLabelError, canonical

logger = logging.getLogger(__name__)

ImageRef = str | tuple[str, ...] | ImagePart
"""A relative path, candidate paths tried in order (the first is reported if none exists), or
an image already in hand (bytes or an absolute path)."""


@dataclass(frozen=True)
class MissingImage:
    """A referenced image that is not on disk; its sample was kept out of the set."""

    sample_id: str
    path: str
    reason: str


@dataclass(frozen=True)
class LoadError:
    """A record that could not be read; it failed alone and the rest of the set loaded."""

    sample_id: str
    """An id for the failed item that names its place, e.g. `set.jsonl:line-7`."""
    source: str
    reason: str
    """What was wrong, naming the file and the line."""


@dataclass
class LoadedSet:
    """The samples a loader produced, and the ones it could not produce (images, bad lines)."""

    source: str
    samples: list[Sample] = field(default_factory=list)
    missing_images: list[MissingImage] = field(default_factory=list)
    errors: list[LoadError] = field(default_factory=list)
    """Records that could not be read (line-based loaders only); not in `samples`."""

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def missing_sample_ids(self) -> list[str]:
        """Ids of the samples dropped for a missing image, in order, without repeats."""
        return list(dict.fromkeys(m.sample_id for m in self.missing_images))


class SetBuilder:
    """Collects samples for one `LoadedSet`, enforcing the loader rules above."""

    def __init__(self, source: str, *, text_only: bool, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise DataSpecError(f"limit must be >= 0, got {limit}")
        self.loaded = LoadedSet(source=source)
        self.text_only = text_only
        self.limit = limit
        self.file = Path()
        self.root = Path()
        self._ids: set[str] = set()
        self._considered = 0

    def use(self, file: Path, root: Path | None = None) -> None:
        """Read from `file` next; images resolve under `root` (default: the file's folder)."""
        self.file = file
        self.root = (root if root is not None else file.parent).resolve()

    @property
    def full(self) -> bool:
        """True once `limit` samples have been considered."""
        return self.limit is not None and self._considered >= self.limit

    @contextlib.contextmanager
    def one_item(self, sample_id: str) -> Iterator[None]:
        """Read one record: a `SchemaError` inside fails this record alone, not the load.

        The record lands in `errors` as `sample_id` (it counts towards `limit`); anything
        else, an `ImageError` for a path outside the root included, still stops the load.
        """
        considered = self._considered
        try:
            yield
        except SchemaError as exc:
            if self._considered == considered:
                self._considered += 1
            self.loaded.errors.append(LoadError(sample_id, self.loaded.source, str(exc)))

    def where(self, item: object) -> str:
        """`FILE item ITEM`, the prefix of every error about one record."""
        return f"{self.file} item {item}"

    def category(self, source: str, label: str, item: object) -> Category:
        """`taxonomy.canonical`, with an unknown label reported as a `SchemaError`."""
        try:
            return canonical(source, label)
        except UnknownLabelError as exc:
            raise SchemaError(f"{self.where(item)}: {exc}") from exc

    def add(
        self,
        *,
        item: object,
        sample_id: str,
        images: Sequence[ImageRef],
        build: Callable[[list[ImagePart]], Sample],
    ) -> None:
        """Resolve `images`, then add `build(resolved_images)` unless an image is missing.

        In text-only mode `build` gets an empty list and the sample is marked
        `metadata["image_omitted"] = True` when it had images.
        """
        if self.full:
            return
        if sample_id in self._ids:
            raise SchemaError(f"{self.where(item)}: duplicate sample id {sample_id!r}")
        parts: list[ImagePart] = []
        missing = False
        for ref in images:
            part = self._resolve(ref, item=item, sample_id=sample_id)
            if self.text_only:
                continue
            if part is None:
                missing = True
            else:
                parts.append(part)
        self._considered += 1
        self._ids.add(sample_id)
        if missing:
            return
        try:
            sample = build(parts)
        except ValidationError as exc:
            raise SchemaError(f"{self.where(item)}: invalid sample ({exc})") from exc
        if self.text_only and images:
            sample.metadata["image_omitted"] = True
        self.loaded.samples.append(sample)

    def _resolve(self, ref: ImageRef, *, item: object, sample_id: str) -> ImagePart | None:
        if isinstance(ref, ImagePart):
            if ref.path is None:
                return ref
            candidates: tuple[str, ...] = (ref.path,)
        else:
            candidates = (ref,) if isinstance(ref, str) else ref
        try:
            paths = [resolve_under_root(Path(c), self.root) for c in candidates]
        except ImageError as exc:
            raise ImageError(f"{self.where(item)} (sample {sample_id!r}): {exc}") from exc
        if self.text_only:
            return None
        for path in paths:
            if path.is_file():
                return ImagePart(path=str(path))
        reason = "not a file" if paths[0].exists() else "file not found"
        self.loaded.missing_images.append(MissingImage(sample_id, str(paths[0]), reason))
        return None

    def finish(self) -> LoadedSet:
        """The set; logs a one-line summary of missing images and of unreadable records."""
        if self.loaded.errors:
            logger.warning(
                "%s: %d records could not be read and were left out (first: %s)",
                self.loaded.source,
                len(self.loaded.errors),
                self.loaded.errors[0].reason,
            )
        if self.loaded.missing_images:
            logger.warning(
                "%s: %d samples left out for %d missing images (first: %s)",
                self.loaded.source,
                len(self.loaded.missing_sample_ids),
                len(self.loaded.missing_images),
                self.loaded.missing_images[0].path,
            )
        return self.loaded


def check_variant(source: str, variant: str, variants: Sequence[str]) -> None:
    """Raise a `DataSpecError` naming the choices when `variant` is not one of `variants`."""
    if variant not in variants:
        raise DataSpecError(
            f"unknown {source} variant {variant!r}; choose one of {', '.join(variants)}"
        )


def read_json(path: Path) -> Any:
    """Parse a JSON file, naming it in the error."""
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise DataSpecError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise DataSpecError(f"{path}: is a folder; name the JSON file inside it") from exc
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: invalid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not UTF-8 text ({exc})") from exc


def read_csv(path: Path, *, required: Sequence[str]) -> list[dict[str, str]]:
    """Read a CSV with a header row; every `required` column must be present."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            absent = [c for c in required if c not in columns]
            if absent:
                raise SchemaError(
                    f"{path}: missing column(s) {', '.join(absent)}; has {', '.join(columns)}"
                )
            rows: list[dict[str, str]] = []
            for row in reader:
                if None in row:
                    raise SchemaError(f"{path} row {len(rows) + 1}: more fields than columns")
                rows.append({k: (v or "") for k, v in row.items()})
            return rows
    except FileNotFoundError as exc:
        raise DataSpecError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise DataSpecError(f"{path}: is a folder; name the CSV file inside it") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: unreadable CSV ({exc})") from exc


def as_record(value: Any, where: str) -> dict[str, Any]:
    """`value` as a JSON object, or a `SchemaError`."""
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def req_str(record: Mapping[str, Any], key: str, where: str, *, empty_ok: bool = False) -> str:
    """A required string field (ints are accepted and turned into strings, for ids)."""
    if key not in record:
        raise SchemaError(f"{where}: missing key {key!r}")
    value = record[key]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise SchemaError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip() and not empty_ok:
        raise SchemaError(f"{where}: {key!r} is empty")
    return value


def opt_str(record: Mapping[str, Any], key: str, where: str) -> str | None:
    """An optional string field; None when absent, null or empty."""
    value = record.get(key)
    if value is None or value == "":
        return None
    return req_str(record, key, where)


def parse_bool(value: Any, where: str, key: str) -> bool:
    """A boolean from JSON or CSV (`true/false`, `1/0`, `yes/no`)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y"):
        return True
    if text in ("false", "0", "no", "n"):
        return False
    raise SchemaError(f"{where}: {key!r} must be a boolean, got {value!r}")
