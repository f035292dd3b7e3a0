"""Labelled conversations from a JSONL file, for `safeturn guard eval --data FILE`.

Two line formats are read, told apart by their keys:

- the OpenAI chat format, `{"id": ..., "messages": [...], "harmful": true|false,
  "source": "optional", "category": "optional"}`; images are `image_url` parts holding a
  `data:` URL, a `file://` URL or a plain path (relative to the file's folder);
- safeturn's own `Sample` (a `dialogue` key, as `safeturn data export` writes), validated by
  the same model the `jsonl:` loader uses.

Every conversation must end with the user turn about to be answered (`surfaced_turn` is that
last turn: for outside data the turn at which harm surfaces is unknown). `safeturn.data`'s
`jsonl:` loader stops at the first bad record, which suits a benchmark but not a file someone
pasted together, so this reader checks each line on its own: a bad line (invalid JSON, no
messages, not ending with a user turn, `harmful` missing or not a boolean, an image that cannot
be read or lies outside the image root, an id already used) becomes a `SkippedLine` naming its
line number, and the other lines are still scored.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from safeturn.errors import ImageError, SafeturnError, SchemaError
from safeturn.errors import UnscorableFileError as UnscorableFileError
from safeturn.schema import Dialogue, ImagePart, Message, Sample
from safeturn.taxonomy import Category, guess_category

DEFAULT_SOURCE = "unspecified"
"""The `source` of a line that names none."""

T = TypeVar("T")


@dataclass(frozen=True)
class LabelledConversation:
    """One labelled conversation, in the shape the moderator evaluation consumes."""

    line: int
    """1-based line number in the file."""
    sample: Sample
    harmful: bool
    source: str
    category: Category | None
    """The line's category when it names one the taxonomy knows (category accuracy)."""
    strategy: str | None
    """The attack strategy when the line says (safeturn samples); None when unknown."""

    @property
    def turns(self) -> int:
        """User turns in the conversation."""
        return self.sample.turns

    @property
    def surfaced_turn(self) -> int:
        """The turn at which harm surfaces: unknown for outside data, so the last user turn."""
        return self.sample.turns


@dataclass(frozen=True)
class SkippedLine:
    """A line that was not scored, and why."""

    line: int
    error: str

    def to_json(self) -> dict[str, Any]:
        """`{"line": n, "error": "..."}`, as the JSON report lists it."""
        return {"line": self.line, "error": self.error}


@dataclass
class LabelledFile:
    """What `read_labelled` made of a file: the scorable conversations and the skipped lines."""

    path: Path
    conversations: list[LabelledConversation] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)

    @property
    def lines(self) -> int:
        """Non-blank lines read."""
        return len(self.conversations) + len(self.skipped)

    def check_scorable(self) -> None:
        """Refuse a file that leaves nothing to rank: no scorable line, or a single class.

        Raises:
            UnscorableFileError: With a message saying what is missing and what to add.
        """
        if not self.lines:
            raise UnscorableFileError(f"{self.path}: no conversations (the file is empty)")
        if not self.conversations:
            first = self.skipped[0]
            raise UnscorableFileError(
                f"{self.path}: none of its {self.lines} lines could be scored "
                f"(first error, line {first.line}: {first.error})"
            )
        harmful = sum(c.harmful for c in self.conversations)
        if harmful in (0, len(self.conversations)):
            kind, missing, flag, rate = (
                ("harmful", "benign", "false", "false-positive rate")
                if harmful
                else ("benign", "harmful", "true", "true-positive rate")
            )
            raise UnscorableFileError(
                f"{self.path}: all {len(self.conversations)} scored conversations are {kind}, "
                f"so AUROC and the {rate} are undefined; add {missing} conversations "
                f'("harmful": {flag}) to the file'
            )


def read_labelled(
    path: Path, *, image_root: Path | None = None, limit: int | None = None
) -> LabelledFile:
    """Read a labelled JSONL file (gzipped when it ends in `.gz`), line by line.

    Args:
        path: The file.
        image_root: Image paths must resolve inside this folder (default: the file's folder).
        limit: Read at most this many non-blank lines.

    Raises:
        SchemaError: The file cannot be opened or is not UTF-8 text. Problems of single lines
            do not raise: they are listed in `LabelledFile.skipped`.
    """
    if limit is not None and limit < 1:
        raise SchemaError(f"limit must be at least 1, got {limit}")
    root = (image_root if image_root is not None else path.parent).resolve()
    conversations, skipped = read_items(
        path,
        lambda text, number: parse_line(text, number, root),
        lambda conversation: conversation.sample.id,
        limit=limit,
    )
    return LabelledFile(path, conversations, skipped)


def read_items(
    path: Path,
    parse: Callable[[str, int], T],
    item_id: Callable[[T], str],
    *,
    limit: int | None = None,
) -> tuple[list[T], list[SkippedLine]]:
    """Parse each non-blank line of `path` on its own: (items, skipped lines).

    `parse` gets the line's text and 1-based number; a line it rejects (`SafeturnError`), or
    one whose `item_id` an earlier line already used, becomes a `SkippedLine`.

    Args:
        path: The JSONL file (gzipped when it ends in `.gz`).
        parse: One line → an item.
        item_id: The id that must be unique across the file.
        limit: Read at most this many non-blank lines.

    Raises:
        SchemaError: The file cannot be opened or is not UTF-8 text.
    """
    items: list[T] = []
    skipped: list[SkippedLine] = []
    first_line: dict[str, int] = {}
    for number, text in read_lines(path):
        if limit is not None and len(items) + len(skipped) >= limit:
            break
        try:
            item = parse(text, number)
            key = item_id(item)
            previous = first_line.setdefault(key, number)
            if previous != number:
                raise SchemaError(f"id {key!r} is used on lines {previous} and {number}")
        except SafeturnError as exc:
            skipped.append(SkippedLine(number, str(exc)))
            continue
        items.append(item)
    return items, skipped


def parse_line(text: str, number: int, root: Path) -> LabelledConversation:
    """One line → a conversation whose images are resolved under `root` and decoded once.

    Raises:
        SchemaError: The line is not a labelled conversation (the message says why).
        ImageError: An image is missing, corrupt, remote or outside `root`.
    """
    record = json_object(text)
    if "dialogue" in record and "messages" not in record:
        sample = _sample_line(record)
        strategy: str | None = sample.strategy
    else:
        sample = _openai_line(record, number)
        strategy = None
    harmful = sample.harmful
    if harmful is None:
        raise SchemaError("'harmful' is missing or null; it must be true or false")
    sample = answerable(
        sample,
        root,
        no_user="no user message; the conversation must end with a user turn",
        last_role="the last message is a {role} turn; the conversation must end with the user "
        "turn about to be answered",
    )
    category = guess_category(sample.category) if sample.category else None
    return LabelledConversation(number, sample, harmful, sample.source, category, strategy)


def answerable(sample: Sample, root: Path, *, no_user: str, last_role: str) -> Sample:
    """`sample`, checked to end with a user turn, its images resolved under `root` and decoded.

    Both file readers need a conversation that a reply answers; each words the errors for its
    file: `no_user` when there is no user message, `last_role` (with `{role}`) when the last
    message is not one.

    Raises:
        SchemaError: The dialogue does not end with a user turn.
        ImageError: An image is missing, corrupt, remote or outside `root`.
    """
    messages = sample.dialogue.messages
    if not any(m.role == "user" for m in messages):
        raise SchemaError(no_user)
    if messages[-1].role != "user":
        raise SchemaError(last_role.format(role=messages[-1].role))
    sample = with_local_images(sample, root)
    sample.check_images()
    return sample


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each non-blank line; `.gz` files are decompressed.

    Raises:
        SchemaError: The file is missing, a folder, or not UTF-8 text.
    """
    try:
        with (
            gzip.open(path, "rt", encoding="utf-8")
            if path.suffix == ".gz"
            else path.open(encoding="utf-8")
        ) as fh:
            for number, text in enumerate(fh, start=1):
                if text.strip():
                    yield number, text
    except FileNotFoundError as exc:
        raise SchemaError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise SchemaError(f"{path}: is a folder; name the JSONL file inside it") from exc
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise SchemaError(f"{path}: not a UTF-8 JSONL file ({exc})") from exc


def json_object(text: str) -> dict[str, Any]:
    """A line's JSON object.

    Raises:
        SchemaError: The line is not JSON, or not an object.
    """
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"invalid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise SchemaError(f"expected a JSON object, got {type(record).__name__}")
    return record


def chat_messages(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `messages` of an OpenAI chat line.

    Raises:
        SchemaError: They are missing, empty, or not all objects.
    """
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SchemaError("no messages: expected a non-empty 'messages' list")
    if not all(isinstance(m, dict) for m in messages):
        raise SchemaError("every entry of 'messages' must be an object with a role")
    return messages


def line_id(record: Mapping[str, Any], number: int) -> str:
    """A chat line's `id` as a string, `line N` when it gives none.

    Raises:
        SchemaError: The id is neither a string nor an integer.
    """
    raw_id = record.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int | None):
        raise SchemaError(f"'id' must be a string or an integer, got {raw_id!r}")
    return f"line {number}" if raw_id is None or raw_id == "" else str(raw_id)


def _sample_line(record: dict[str, Any]) -> Sample:
    try:
        return Sample.model_validate(record)
    except ValidationError as exc:
        raise SchemaError(f"invalid safeturn sample ({brief_validation_error(exc)})") from exc


def _openai_line(record: Mapping[str, Any], number: int) -> Sample:
    messages = chat_messages(record)
    if "harmful" not in record:
        raise SchemaError("'harmful' is missing; it must be true or false")
    harmful = record["harmful"]
    if not isinstance(harmful, bool):
        raise SchemaError(f"'harmful' must be true or false, got {harmful!r}")
    sample_id = line_id(record, number)
    source = record.get("source") or DEFAULT_SOURCE
    category = record.get("category")
    if not isinstance(source, str) or not (category is None or isinstance(category, str)):
        raise SchemaError("'source' and 'category' must be strings when given")
    try:
        return Sample(
            id=sample_id,
            source=source,
            category=category or None,
            harmful=harmful,
            dialogue=Dialogue.from_openai(messages),
        )
    except ValidationError as exc:
        raise SchemaError(f"invalid messages ({brief_validation_error(exc)})") from exc


def with_local_images(sample: Sample, root: Path) -> Sample:
    """Turn `file://` URLs and plain paths into image paths resolved (and kept) inside `root`."""
    if not sample.dialogue.images:
        return sample
    messages = [
        Message(
            role=m.role,
            parts=[
                _local_image(p, root, f"message {i} image {j}") if isinstance(p, ImagePart) else p
                for j, p in enumerate(m.parts)
            ],
        )
        for i, m in enumerate(sample.dialogue.messages)
    ]
    return sample.model_copy(update={"dialogue": Dialogue(messages=messages)})


def _local_image(part: ImagePart, root: Path, label: str) -> ImagePart:
    if part.url is not None:
        url = part.url
        if url.startswith("data:"):
            return part
        parsed = urlsplit(url)
        if parsed.scheme in ("http", "https"):
            raise ImageError(f"{label}: remote image URL is not fetched: {url[:80]}")
        if parsed.scheme == "file":
            host = "" if parsed.netloc in ("", "localhost") else parsed.netloc
            part = ImagePart(path=unquote(host + parsed.path))
        elif parsed.scheme == "":
            part = ImagePart(path=unquote(url))
        else:
            raise ImageError(f"{label}: unsupported image URL scheme {parsed.scheme!r}")
    try:
        return part.resolved(root)
    except ImageError as exc:
        raise ImageError(f"{label}: {exc}") from exc


def brief_validation_error(exc: ValidationError) -> str:
    """The first three problems of a pydantic error on one line, for a per-line message."""
    errors = exc.errors()
    shown = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in errors[:3]
    )
    return shown + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
