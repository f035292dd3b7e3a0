"""Labelled replies from every source in `../shared/data` that has model or human replies.

The fine-tuned judge learns from (user turns, reply, label) triples. Each source is read as
its authors wrote it, and each example names its `source` family, so that training can leave
one family out and test on it (`train_judge.leave_one_source_out`):

- `jailbreakbench`: attack artifacts; unsafe when the release's judge said `jailbroken`.
  The context is the behaviour's goal (what the attack asked for), not the jailbreak prompt.
- `xstest`: three models' completions with human labels; unsafe when the prompt is unsafe
  and the label is full compliance (everything answered on a safe prompt is safe).
- `hh-rlhf`: red-teaming conversations with two final replies; only their *order* is known
  (the rejected one is less harmless), so they enter as preference pairs, never as labels.
- `mtbench101`, `vlguard`, `siuo`: replies written to be helpful and harmless (benign task
  dialogues; VLGuard's safe answers and refusals; SIUO's reference answers); all safe.

`group` is the unit a split respects (a behaviour, a prompt, a conversation), so the same
request never sits on both sides of a split.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeturn.data.base import read_json
from safeturn.data.dialogsets import parse_hh_turns
from safeturn.errors import PrerequisiteError, SchemaError
from safeturn.judges.train_classifier import load_jailbreakbench

SOURCE_FILES = {
    "jailbreakbench": "jailbreakbench",
    "xstest": "xstest/model_completions",
    "hh-rlhf": "hh-rlhf-harmless/harmless-base-test.jsonl.gz",
    "mtbench101": "mtbench101/mtbench101_train_tasks.jsonl",
    "vlguard": "vlguard-dream/train_llava_format.json",
    "siuo": "siuo/siuo_gen.json",
}
"""Where each source family lives under the data root."""
SOURCE_NOTES = {
    "jailbreakbench": "JailbreakBench/artifacts @ 909e68c (MIT), label `jailbroken`",
    "xstest": "paul-rottger/exaggerated-safety @ d7bb5bd (CC BY 4.0), human `final_label`",
    "hh-rlhf": "anthropics/hh-rlhf harmless-base test @ 354e5c3 (MIT), preference pairs",
    "mtbench101": "mtbench101/mt-bench-101 @ bc18b3e (Apache-2.0), benign dialogues",
    "vlguard": "VLGuard train (via Kizna1ver/DREAM @ aabdbc5), safe answers and refusals",
    "siuo": "sinwang20/SIUO @ 18974b6 (CC BY-NC 4.0), reference answers",
}
_IMAGE_TOKEN = re.compile(r"<image>\s*")
_COMPLIED = {"1_full_compliance": True, "2_full_refusal": False}
"""XSTest's human labels as compliance; a partial refusal is neither."""


@dataclass(frozen=True)
class ReplyExample:
    """One reply to judge, in context, with what is known of its label."""

    source: str
    """The family a leave-one-source-out fold holds out (derived cases keep their origin's)."""
    group: str
    users: tuple[str, ...]
    """The user turns before the reply, oldest first (the last is the one it answers)."""
    reply: str
    unsafe: bool | None
    """True: harmful help; False: safe; None: only ranked within its `pair`."""
    pair: str | None = None
    """Preference pairs share this id; `rank` 1 is the less harmless reply."""
    rank: int = 0
    kind: str = "real"
    """`real` for a source's own reply, else the generator that made it (`hard_cases`)."""
    harmful_request: bool | None = None
    """Whether the user turns ask for harm, where the source says (the judge's first factor)."""
    complied: bool | None = None
    """Whether the reply gives what was asked rather than declining (the second factor)."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def load_reply_examples(
    root: Path, *, sources: tuple[str, ...] | None = None, caps: dict[str, int] | None = None
) -> list[ReplyExample]:
    """Every labelled reply of the named source families under `root` (all by default).

    Args:
        root: The shared data folder.
        sources: Families to read; a family whose files are missing is an error.
        caps: Most examples (pairs count as two) kept per family, first in file order.

    Raises:
        PrerequisiteError: A requested family's files are missing.
        SchemaError: A file is malformed (the message names it).
    """
    wanted = sources or tuple(SOURCE_FILES)
    out: list[ReplyExample] = []
    for name in wanted:
        path = root / SOURCE_FILES[name]
        if not path.exists():
            raise PrerequisiteError(f"judge training source {name!r}: {path} is missing")
        found = list(_READERS[name](path))
        cap = (caps or {}).get(name)
        out += found[:cap] if cap is not None else found
    return out


def _jailbreakbench(path: Path) -> Iterator[ReplyExample]:
    seen: set[tuple[str, str]] = set()
    for ex in load_jailbreakbench(path):
        key = (ex.group, ex.response.strip())
        if key in seen:
            continue
        seen.add(key)
        yield ReplyExample(
            "jailbreakbench",
            ex.group,
            (ex.request,),
            ex.response,
            ex.harmful,
            harmful_request=True,
            complied=True if ex.harmful else None,  # not jailbroken: declined or useless
        )


def _xstest(path: Path) -> Iterator[ReplyExample]:
    prompts = path.parent / "xstest_prompts.csv"
    with prompts.open(encoding="utf-8", newline="") as fh:
        unsafe_prompt = {row["id"]: row["label"] == "unsafe" for row in csv.DictReader(fh)}
    for file in sorted(path.glob("*.csv")):
        model = file.stem.rsplit("_", 1)[-1]
        with file.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                pid = row["id"].removeprefix("v2-")
                label = row["final_label"].strip()
                unsafe = unsafe_prompt.get(pid, row["type"].startswith("contrast"))
                yield ReplyExample(
                    "xstest",
                    f"xstest:{pid}",
                    (row["prompt"],),
                    row["completion"].strip(),
                    unsafe and label == "1_full_compliance",
                    meta={"model": model, "final_label": label, "unsafe_prompt": unsafe},
                    harmful_request=unsafe,
                    complied=_COMPLIED.get(label),
                )


Turns = list[tuple[str, str]]


def hh_rlhf_conversations(path: Path) -> Iterator[tuple[str, Turns, Turns]]:
    """(group, chosen turns, rejected turns) of every line of hh-rlhf harmless-base.

    The group (`hh-rlhf:<line>`) is the split unit of the conversation's preference pair and
    of anything else drawn from the same conversation (`request_pool`).

    Raises:
        SchemaError: A line is not a pair of transcripts (the message names the line).
    """
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                record = json.loads(line)
                chosen = parse_hh_turns(record["chosen"])
                rejected = parse_hh_turns(record["rejected"])
            except (ValueError, KeyError, TypeError) as exc:
                raise SchemaError(f"{path} line {number}: {exc}") from exc
            yield f"hh-rlhf:{number}", chosen, rejected


def _hh_rlhf(path: Path) -> Iterator[ReplyExample]:
    for pair, chosen, rejected in hh_rlhf_conversations(path):
        if not chosen or not rejected or chosen[-1][0] != "assistant":
            continue
        if rejected[-1][0] != "assistant" or chosen[-1][1] == rejected[-1][1]:
            continue
        users = tuple(text for role, text in chosen[:-1] if role == "user")
        if not users or not chosen[-1][1] or not rejected[-1][1]:
            continue
        for rank, reply in ((0, chosen[-1][1]), (1, rejected[-1][1])):
            yield ReplyExample(
                "hh-rlhf", pair, users, reply, None, pair=pair, rank=rank, harmful_request=True
            )


def _mtbench101(path: Path) -> Iterator[ReplyExample]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                history = json.loads(line)["history"]
                users = tuple(str(turn["user"]) for turn in history)
                reply = str(history[-1]["bot"])
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise SchemaError(f"{path} line {number}: {exc}") from exc
            if reply.strip():
                yield ReplyExample(
                    "mtbench101",
                    f"mtbench101:{number}",
                    users,
                    reply,
                    False,
                    harmful_request=False,
                    complied=True,
                )


def _vlguard(path: Path) -> Iterator[ReplyExample]:
    records = read_json(path)
    for index, record in enumerate(records):
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list):
            raise SchemaError(f"{path} record {index}: no 'conversations' list")
        users: list[str] = []
        for turn in turns:
            text = _IMAGE_TOKEN.sub("", str(turn.get("value", ""))).strip()
            if turn.get("from") == "human":
                users.append(text)
            elif turn.get("from") == "gpt" and users and text:
                group = f"vlguard:{record.get('id', index)}"
                yield ReplyExample("vlguard", group, tuple(users), text, False)


def _siuo(path: Path) -> Iterator[ReplyExample]:
    records = read_json(path)
    for index, record in enumerate(records):
        question, answer = record.get("question"), record.get("reference_answer")
        if isinstance(question, str) and isinstance(answer, str) and answer.strip():
            group = f"siuo:{record.get('question_id', index)}"
            yield ReplyExample("siuo", group, (question,), answer.strip(), False, complied=True)


_READERS = {
    "jailbreakbench": _jailbreakbench,
    "xstest": _xstest,
    "hh-rlhf": _hh_rlhf,
    "mtbench101": _mtbench101,
    "vlguard": _vlguard,
    "siuo": _siuo,
}
