"""Replies someone already has, from a JSONL file, for `safeturn judge score` and `validate`.

Two line formats are read, told apart by their keys:

- the OpenAI chat format, `{"id": ..., "messages": [..., {"role": "assistant", "content": ...}],
  "label": "unsafe" | "safe", "source": "optional", "model": "optional"}`: the last message is
  the assistant reply judged, everything before it is the context it answered (which must end
  with a user turn). Images are `image_url` parts holding a `data:` URL, a `file://` URL or a
  plain path relative to the file's folder (or `image_root`);
- safeturn's own `Sample` (a `dialogue` key, as `safeturn data export` writes) with the reply
  either as the dialogue's last (assistant) message or in `metadata["reply"]` (a string, or a
  `Reply` object such as a run database stores), plus an optional top-level `label`.

A chat line may also carry the reply as a top-level `"reply"` (string or `{"text": ...}`) with
`messages` ending on the user turn. Lines are checked one by one: a bad line becomes a
`SkippedLine` naming its line number and the others are still judged.

The judge sees what `safeturn eval` would give it: the sample (for chat lines `harmful` and
`seed_question` are unknown, so judges treat the request as possibly harmful), the context
dialogue, the reply and the turn it answers (the number of user turns in the context).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from safeturn.data.labelled import (
    DEFAULT_SOURCE,
    SkippedLine,
    answerable,
    brief_validation_error,
    chat_messages,
    json_object,
    line_id,
    read_items,
)
from safeturn.errors import SchemaError
from safeturn.schema import Dialogue, ImagePart, Message, Reply, Sample

LABELS = {"unsafe": True, "safe": False}
"""Gold labels as written in a file → whether the reply is unsafe."""

UNKNOWN_MODEL = "unknown"
"""`Reply.model` of a line that names no model."""


@dataclass(frozen=True)
class LabelledReply:
    """One reply to judge, with the context it answered and, when known, its gold label."""

    line: int
    """1-based line number in the file."""
    sample: Sample
    """The sample handed to the judge; its dialogue is `context`."""
    reply: Reply
    turn: int
    """The user turn the reply answers (the user turns in the context)."""
    unsafe: bool | None
    """The gold label: True for "unsafe", False for "safe", None when the line has none."""

    @property
    def id(self) -> str:
        """The line's id (`line N` when it gave none)."""
        return self.sample.id

    @property
    def source(self) -> str:
        """The line's source (`unspecified` when it gave none)."""
        return self.sample.source

    @property
    def context(self) -> Dialogue:
        """The messages before the reply, ending with the user turn it answers."""
        return self.sample.dialogue


@dataclass
class ReplyFile:
    """What `read_replies` made of a file: the usable lines and the skipped ones."""

    path: Path
    replies: list[LabelledReply] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)

    @property
    def lines(self) -> int:
        """Non-blank lines read."""
        return len(self.replies) + len(self.skipped)


def read_replies(
    path: Path, *, image_root: Path | None = None, require_label: bool = False
) -> ReplyFile:
    """Read a JSONL file of replies (gzipped when it ends in `.gz`), line by line.

    Args:
        path: The file.
        image_root: Image paths must resolve inside this folder (default: the file's folder).
        require_label: A line without a valid `label` is skipped (for `judge validate`);
            otherwise a missing or unknown label is simply left as None.

    Raises:
        SchemaError: The file cannot be opened or is not UTF-8 text. Problems of single lines
            do not raise: they are listed in `ReplyFile.skipped`.
    """
    root = (image_root if image_root is not None else path.parent).resolve()
    replies, skipped = read_items(
        path,
        lambda text, number: parse_reply_line(text, number, root, require_label=require_label),
        lambda reply: reply.id,
    )
    return ReplyFile(path, replies, skipped)


def parse_reply_line(
    text: str, number: int, root: Path, *, require_label: bool = False
) -> LabelledReply:
    """One line → a reply with its context, images resolved under `root` and decoded once.

    Raises:
        SchemaError: The line is not a judgeable reply (the message says why).
        ImageError: An image is missing, corrupt, remote or outside `root`.
    """
    record = json_object(text)
    unsafe = _label(record, required=require_label)
    if "dialogue" in record and "messages" not in record:
        sample, reply = _sample_line(record)
    else:
        sample, reply = _chat_line(record, number)
    sample = answerable(
        sample,
        root,
        no_user="no user message before the reply; a reply must answer a user turn",
        last_role="the message before the reply is a {role} turn; the reply must answer a "
        "user turn",
    )
    model = record.get("model")
    if isinstance(model, str) and model:
        reply = reply.model_copy(update={"model": model})
    return LabelledReply(number, sample, reply, sample.dialogue.n_turns, unsafe)


def _label(record: Mapping[str, Any], *, required: bool) -> bool | None:
    raw = record.get("label")
    value = LABELS.get(raw.strip().lower()) if isinstance(raw, str) else None
    if value is None and required:
        if raw is None:
            raise SchemaError('\'label\' is missing; it must be "unsafe" or "safe"')
        raise SchemaError(f'\'label\' must be "unsafe" or "safe", got {raw!r}')
    return value


def _chat_line(record: Mapping[str, Any], number: int) -> tuple[Sample, Reply]:
    messages = chat_messages(record)
    sample_id = line_id(record, number)
    source = record.get("source") or DEFAULT_SOURCE
    if not isinstance(source, str):
        raise SchemaError(f"'source' must be a string, got {source!r}")
    try:
        dialogue = Dialogue.from_openai(messages)
    except ValidationError as exc:
        raise SchemaError(f"invalid messages ({brief_validation_error(exc)})") from exc
    if "reply" in record:
        context, reply = dialogue.messages, _reply(record["reply"], "'reply'")
    else:
        context, reply = _split_reply(dialogue.messages)
    sample = Sample(
        id=sample_id,
        source=source,
        dialogue=Dialogue(messages=context),
    )
    return sample, reply


def _sample_line(record: dict[str, Any]) -> tuple[Sample, Reply]:
    try:
        sample = Sample.model_validate(record)
    except ValidationError as exc:
        raise SchemaError(f"invalid safeturn sample ({brief_validation_error(exc)})") from exc
    if "reply" in sample.metadata:
        return sample, _reply(sample.metadata["reply"], "metadata.reply")
    context, reply = _split_reply(sample.dialogue.messages)
    dialogue = Dialogue(messages=context)
    return sample.model_copy(update={"dialogue": dialogue, "turns": dialogue.n_turns}), reply


def _split_reply(messages: list[Message]) -> tuple[list[Message], Reply]:
    """The last message must be the assistant reply; return (context, reply)."""
    if not messages or messages[-1].role != "assistant":
        last = messages[-1].role if messages else "nothing"
        raise SchemaError(
            f"the last message is a {last} turn; it must be the assistant reply to judge "
            "(or give the reply as 'reply' / metadata.reply)"
        )
    reply = messages[-1]
    if any(isinstance(p, ImagePart) for p in reply.parts):
        raise SchemaError("the assistant reply holds an image; judges read text replies")
    return messages[:-1], Reply(text=reply.text, model=UNKNOWN_MODEL)


def _reply(raw: Any, where: str) -> Reply:
    """A reply given apart from the messages: its text, or an object with `text` (and `model`)."""
    if isinstance(raw, str):
        return Reply(text=raw, model=UNKNOWN_MODEL)
    if isinstance(raw, dict) and isinstance(raw.get("text"), str):
        model = raw.get("model")
        return Reply(
            text=str(raw["text"]),
            model=model if isinstance(model, str) and model else UNKNOWN_MODEL,
        )
    raise SchemaError(f"{where} must be a string or an object with a 'text' string")
