"""`--set KEY=VALUE`: any config field from the command line, checked against the config model.

The train and loop commands take a config file plus `--set` items instead of one hand-written
option per field, so a new field is settable the moment it is declared. A key is a field name,
dotted into nested sections (`reward.beta`, `lora.r`, `sft.max_steps`, `dream.rlaif.k`); the
value is parsed as YAML (`1e-5`, `true`, `null`, `[a, b]`), and the config model validates the
merged values as it validates a file. A key that is no field fails here, naming it.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel

from safeturn.errors import SafeturnError


def parse_set(item: str, *, error: type[SafeturnError]) -> tuple[list[str], Any]:
    """`a.b=VALUE` → (["a", "b"], VALUE parsed as YAML).

    Raises:
        error: No `=`, an empty key part, or a value that is not YAML.
    """
    key, sep, text = item.partition("=")
    parts = [part.strip() for part in key.split(".")]
    if not sep or not all(parts):
        raise error(f"--set {item!r}: expected KEY=VALUE, e.g. learning_rate=1e-5 or lora.r=8")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
    return parts, value


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (`LoraSettings | None` → `LoraSettings`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            found = section_model(arm)
            if found is not None:
                return found
    return None


def _free_mapping(annotation: Any) -> bool:
    """Whether a field is a plain `dict` (its keys are not checked here)."""
    return annotation is dict or typing.get_origin(annotation) is dict


def _unknown(model: type[BaseModel], part: str, item: str) -> str:
    names = list(model.model_fields)
    close = difflib.get_close_matches(part, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"--set {item!r}: {model.__name__} has no field {part!r}{hint}; "
        f"its fields: {', '.join(names)}"
    )


def _seed(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The values a section starts from when the file does not give it: its default's own."""
    default = model.model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return default.model_dump(exclude_unset=True)
    return dict(default) if isinstance(default, dict) else {}


def apply_sets(
    model: type[BaseModel],
    values: dict[str, Any],
    sets: Sequence[str],
    *,
    error: type[SafeturnError],
) -> None:
    """Write each `KEY=VALUE` item into `values` (a config's raw mapping), in order.

    A nested key fills in the section the file gave, or else the section's default (so
    `--set sft.max_steps=3` keeps the loop's other SFT defaults); `--set lora.r=8` creates an
    adapter with its other fields at their defaults.

    Raises:
        error: A malformed item, a key that is not a field of `model` (named, with the closest
            field name), or a dotted key through a field that is not a section.
    """
    for item in sets:
        parts, value = parse_set(item, error=error)
        target, current = values, model
        for depth, part in enumerate(parts):
            if part not in current.model_fields:
                raise error(_unknown(current, part, item))
            if depth == len(parts) - 1:
                target[part] = value
                break
            annotation = current.model_fields[part].annotation
            inner = section_model(annotation)
            if inner is None and not _free_mapping(annotation):
                dotted = ".".join(parts[: depth + 1])
                raise error(f"--set {item!r}: {dotted} is a single value, not a section")
            existing = target.get(part)
            if isinstance(existing, BaseModel):
                existing = existing.model_dump(exclude_unset=True)
            if existing is None:
                existing = _seed(current, part)
            if not isinstance(existing, dict):
                raise error(f"--set {item!r}: {'.'.join(parts[: depth + 1])} is not a mapping")
            target[part] = existing = dict(existing)
            if inner is None:  # a free-form dict: the rest of the key is one entry's path
                _set_path(existing, parts[depth + 1 :], value)
                break
            target, current = existing, inner


def _set_path(target: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    for part in parts[:-1]:
        nested = target.get(part)
        target[part] = nested = dict(nested) if isinstance(nested, dict) else {}
        target = nested
    target[parts[-1]] = value
