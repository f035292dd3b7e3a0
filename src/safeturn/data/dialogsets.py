r"""Real multi-turn text dialogues written by people: hh-rlhf red-teaming and MT-Bench-101.

These are the only sources here whose multi-turn structure nobody on this project wrote, so
they are what tells a moderator's cross-turn reading apart from memorised builder templates.

- hh-rlhf harmless-base (`harmless-base-test.jsonl.gz`, lines `{chosen, rejected}`): the
  same red-teaming conversation ("\n\nHuman: … \n\nAssistant: …") with the more and the
  less harmless final assistant reply. A sample is the conversation up to and including its
  last human turn (the turn the final reply answers); `harmful` is True, because every
  conversation is a person trying to draw out harmful help (how hard they try varies, which
  is label noise the evaluation has to live with). The two final replies are kept in
  `metadata` (`chosen`, `rejected`) for pairwise judges and preference training.
- MT-Bench-101 (`mtbench101_train_tasks.jsonl`, lines `{task, id, history: [{user, bot}]}`):
  benign multi-turn task dialogues; a sample ends with the last user turn, and the last bot
  reply is its `reference_answer`. `harmful` is False.

A malformed line fails alone (listed in `LoadedSet.errors` with its line number); the others load.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from safeturn.data.base import DataSpecError, LoadedSet, SetBuilder
from safeturn.data.registry import DATASETS
from safeturn.errors import SchemaError
from safeturn.schema import Dialogue, ImagePart, Message, Sample

_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def _lines(path: Path, pattern: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of a JSONL file, gzipped or not; a folder is searched.

    A line that is not JSON comes as a `SchemaError` in place of its record, for the caller to
    raise inside `SetBuilder.one_item`: it fails that line, not the file.
    """
    if path.is_dir():
        found = sorted(path.glob(pattern))
        if not found:
            raise DataSpecError(f"{path}: no file matching {pattern}")
        path = found[0]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                yield number, SchemaError(f"{path} line {number}: invalid JSON ({exc})")


def parse_hh_turns(text: str) -> list[tuple[str, str]]:
    """("user" | "assistant", text) turns of an hh-rlhf transcript, in order.

    Raises:
        ValueError: The text does not start with a Human turn.
    """
    pieces = _TURN.split(text)
    if len(pieces) < 3 or pieces[0].strip():
        raise ValueError('expected a transcript starting with "\\n\\nHuman:"')
    roles = {"Human": "user", "Assistant": "assistant"}
    return [(roles[pieces[i]], pieces[i + 1].strip()) for i in range(1, len(pieces) - 1, 2)]


@DATASETS.register(
    "hh-rlhf",
    summary="hh-rlhf red-teaming conversations (people, multi-turn)",
    example="hh-rlhf:harmless-base-test.jsonl.gz",
    argument="path",
)
def load_hh_rlhf(
    path: Path, *, text_only: bool = False, limit: int | None = None, root: Path | None = None
) -> LoadedSet:
    """Load hh-rlhf harmless-base red-teaming conversations (see the module docstring)."""
    builder = SetBuilder("hh-rlhf", text_only=text_only, limit=limit)
    builder.use(path if path.is_file() else path / "harmless-base-test.jsonl.gz", root)
    return _load_lines(builder, path, "*.jsonl*", "hh-rlhf-", _add_hh)


def _load_lines(
    builder: SetBuilder,
    path: Path,
    pattern: str,
    item_prefix: str,
    add: Callable[[SetBuilder, int, Any], None],
) -> LoadedSet:
    """Add each line's sample with `add`; a bad line (bad JSON too) fails alone, by number."""
    for number, record in _lines(path, pattern):
        if builder.full:
            break
        with builder.one_item(f"{item_prefix}{number}"):
            if isinstance(record, SchemaError):
                raise record
            add(builder, number, record)
    return builder.finish()


def _add_hh(builder: SetBuilder, number: int, record: Any) -> None:
    """Add the sample of one parsed hh-rlhf line, or raise a `SchemaError` naming the line."""
    where = builder.where(f"line {number}")
    if not isinstance(record, dict) or not isinstance(record.get("chosen"), str):
        raise SchemaError(f"{where}: expected an object with a string 'chosen'")
    try:
        turns = parse_hh_turns(record["chosen"])
        rejected = parse_hh_turns(str(record.get("rejected", "")))
    except ValueError as exc:
        raise SchemaError(f"{where}: {exc}") from exc
    while turns and turns[-1][0] == "assistant":
        turns.pop()
    final_chosen = _final_reply(record["chosen"])
    final_rejected = _final_reply(str(record.get("rejected", ""))) if rejected else None
    if not turns or not all(text for _, text in turns):
        raise SchemaError(f"{where}: a turn is empty")
    messages = [Message.user(t) if r == "user" else Message.assistant(t) for r, t in turns]
    sample = Sample(
        id=f"hh-rlhf-{number}",
        source="hh-rlhf",
        strategy="none",
        harmful=True,
        seed_question=turns[-1][1],
        reference_answer=final_chosen,
        dialogue=Dialogue(messages=messages),
        metadata={"chosen": final_chosen, "rejected": final_rejected, "line": number},
    )
    builder.add(item=f"line {number}", sample_id=sample.id, images=[], build=_const(sample))


def _const(sample: Sample) -> Callable[[list[ImagePart]], Sample]:
    """A `SetBuilder` build function for a sample without images."""
    return lambda _images: sample


def _final_reply(transcript: str) -> str | None:
    turns = parse_hh_turns(transcript)
    return turns[-1][1] if turns and turns[-1][0] == "assistant" else None


@DATASETS.register(
    "mtbench101",
    summary="MT-Bench-101 benign dialogues",
    example="mtbench101:mtbench101_train_tasks.jsonl",
    argument="path",
)
def load_mtbench101(
    path: Path, *, text_only: bool = False, limit: int | None = None, root: Path | None = None
) -> LoadedSet:
    """Load MT-Bench-101 dialogues (benign, 2–7 user turns; see the module docstring)."""
    builder = SetBuilder("mtbench101", text_only=text_only, limit=limit)
    builder.use(path if path.is_file() else path / "mtbench101_train_tasks.jsonl", root)
    return _load_lines(builder, path, "*.jsonl", "mtbench101-line-", _add_mtbench)


def _add_mtbench(builder: SetBuilder, number: int, record: Any) -> None:
    """Add the sample of one parsed MT-Bench-101 line, or raise a `SchemaError` naming it."""
    where = builder.where(f"line {number}")
    history = record.get("history") if isinstance(record, dict) else None
    if not isinstance(history, list) or not history:
        raise SchemaError(f"{where}: expected a non-empty 'history' list")
    messages: list[Message] = []
    for index, turn in enumerate(history):
        user, bot = (turn.get("user"), turn.get("bot")) if isinstance(turn, dict) else (0, 0)
        if not isinstance(user, str) or not isinstance(bot, str) or not user.strip():
            raise SchemaError(f"{where}: history[{index}] needs string 'user' and 'bot'")
        messages.append(Message.user(user))
        messages.append(Message.assistant(bot))
    reference = messages.pop().text
    task = str(record.get("task", "unknown"))
    sample = Sample(
        id=f"mtbench101-{task}-{record.get('id', number)}",
        source="mtbench101",
        strategy="none",
        harmful=False,
        seed_question=messages[-1].text,
        reference_answer=reference,
        dialogue=Dialogue(messages=messages),
        metadata={"task": task, "line": number},
    )
    builder.add(item=f"line {number}", sample_id=sample.id, images=[], build=_const(sample))
