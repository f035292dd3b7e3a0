"""SafeMT: multi-turn image dialogues built from 2,000 harmful seed questions.

Release layout (`Data/{1,2,4,6,8}_turn.json`, or the `.SAMPLE.json` excerpts in
`shared/data/safemt/`): a JSON list of records `{id, scenario, image_path, dialogue, question}`.

What the files really hold (checked on the sample files and the release's inference code):

- `dialogue` is the whole conversation to replay and already ends with a user turn: the
  N-turn file has N user messages with N-1 scripted assistant replies between them. The last
  user turn is a paraphrase of the seed (4-turn) or a softer lead-in (2-turn); in the 1-turn
  file it is the seed itself.
- `question` is the harmful *seed question*, identical for one `id` across the turn files. It
  is not sent to the model; it is what the judge checks the final reply against. Only if a
  dialogue ends with an assistant turn is `question` appended as the final user turn
  (`metadata["question_appended"] = True`).
- The one image goes on the first user message, before its text; `image_path` is relative to
  the folder of the JSON file (`images/<scenario>/<name>.jpg`).

The Hugging Face copy uses `image_rel_path` instead of `image_path` and stores `dialogue` as a
JSON string, with no `question` column; there the seed question is taken from the 1-turn
record with the same id when the set has one.

Sample ids are `safemt-{turns}t-{id}`; `metadata["seed_id"]` is the shared id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safeturn.data.base import (
    DataSpecError,
    ImageRef,
    LoadedSet,
    SetBuilder,
    as_record,
    opt_str,
    read_json,
    req_str,
)
from safeturn.data.registry import DATASETS
from safeturn.errors import SchemaError
from safeturn.schema import Dialogue, ImagePart, Message, Sample

SOURCE = "safemt"
_TURN_FILE = re.compile(r"^(\d+)_turn(\.sample)?\.jsonl?$", re.IGNORECASE)


@DATASETS.register(
    "safemt",
    summary="SafeMT multi-turn dialogues",
    example="safemt:Data/",
    argument="path",
)
def load_safemt(
    path: Path,
    *,
    text_only: bool = False,
    limit: int | None = None,
    root: Path | None = None,
) -> LoadedSet:
    """Load SafeMT turn files: one file, a `.jsonl` export, or a folder of turn files.

    A folder loads every `{n}_turn.json` in turn order, falling back to `{n}_turn.SAMPLE.json`
    where the full file is absent.
    """
    builder = SetBuilder(SOURCE, text_only=text_only, limit=limit)
    for file in turn_files(path) if path.is_dir() else [path]:
        builder.use(file, root)
        for index, record in enumerate(_records(file), start=1):
            if builder.full:
                break
            add_safemt_record(builder, record, index)
    fill_seed_questions(builder.loaded)
    return builder.finish()


def turn_files(folder: Path) -> list[Path]:
    """The turn files of a SafeMT folder, by turn count; full files win over samples."""
    chosen: dict[int, Path] = {}
    for file in sorted(folder.iterdir()):
        match = _TURN_FILE.match(file.name)
        if not match or not file.is_file():
            continue
        turns, is_sample = int(match.group(1)), match.group(2) is not None
        if turns not in chosen or not is_sample:
            chosen[turns] = file
    if not chosen:
        raise DataSpecError(f"{folder}: no SafeMT turn files ({{n}}_turn.json) found")
    return [chosen[t] for t in sorted(chosen)]


def _records(file: Path) -> Iterable[Any]:
    if file.suffix.lower() != ".jsonl":
        data = read_json(file)
        if not isinstance(data, list):
            raise SchemaError(f"{file}: expected a JSON list of records")
        return data
    records: list[Any] = []
    with file.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise SchemaError(f"{file}:{lineno}: invalid JSON ({exc})") from exc
    return records


def add_safemt_record(builder: SetBuilder, raw: Any, index: int) -> None:
    """Turn one SafeMT record (file or Hugging Face layout) into a sample."""
    record = as_record(raw, builder.where(f"#{index}"))
    seed_id = req_str(record, "id", builder.where(f"#{index}"))
    where = builder.where(seed_id)
    scenario = req_str(record, "scenario", where)
    category = builder.category(SOURCE, scenario, seed_id)
    question = opt_str(record, "question", where)
    turns = _dialogue(record.get("dialogue"), where)
    appended = False
    if question is not None and (not turns or turns[-1][0] != "user"):
        turns.append(("user", question))
        appended = True
    if not any(role == "user" for role, _ in turns):
        raise SchemaError(f"{where}: dialogue has no user turn and no question")
    image = _image_ref(record, where)
    images: list[ImageRef] = [image] if image is not None else []
    n_turns = sum(1 for role, _ in turns if role == "user")
    sample_id = f"safemt-{n_turns}t-{seed_id}"
    metadata: dict[str, Any] = {
        "source_category": scenario,
        "seed_id": seed_id,
        "file": builder.file.name,
    }
    if isinstance(image, str):
        metadata["image_path"] = image
    if appended:
        metadata["question_appended"] = True

    def build(parts: list[ImagePart]) -> Sample:
        return Sample(
            id=sample_id,
            source=SOURCE,
            category=category.value,
            strategy="safemt",
            harmful=True,
            seed_question=question,
            dialogue=_with_first_image(turns, parts),
            metadata=metadata,
        )

    builder.add(item=seed_id, sample_id=sample_id, images=images, build=build)


def fill_seed_questions(loaded: LoadedSet) -> None:
    """Give SafeMT samples without a seed question the 1-turn text for the same seed id."""
    own = [s for s in loaded.samples if s.source == SOURCE and "seed_id" in s.metadata]
    seeds = {
        s.metadata["seed_id"]: s.dialogue.messages[-1].text
        for s in own
        if s.turns == 1 and s.seed_question is None
    }
    for sample in own:
        seed = seeds.get(sample.metadata["seed_id"])
        if sample.seed_question is None and seed is not None:
            sample.seed_question = seed
            sample.metadata["seed_question_from"] = "1-turn dialogue"


def _dialogue(value: Any, where: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{where}: 'dialogue' is a string but not JSON ({exc})") from exc
    if not isinstance(value, list):
        raise SchemaError(f"{where}: 'dialogue' must be a list of {{role, content}} objects")
    turns: list[tuple[str, str]] = []
    for i, raw in enumerate(value):
        message = as_record(raw, f"{where} dialogue[{i}]")
        role = req_str(message, "role", f"{where} dialogue[{i}]")
        if role not in ("system", "user", "assistant"):
            raise SchemaError(f"{where} dialogue[{i}]: unsupported role {role!r}")
        turns.append((role, req_str(message, "content", f"{where} dialogue[{i}]", empty_ok=True)))
    return turns


def _image_ref(record: dict[str, Any], where: str) -> ImageRef | None:
    for key in ("image_path", "image_rel_path"):
        value = opt_str(record, key, where)
        if value is not None:
            return value
    image = record.get("image")
    if isinstance(image, ImagePart):
        return image
    if isinstance(image, dict) and isinstance(image.get("bytes"), bytes):
        return ImagePart(data=image["bytes"])
    if isinstance(image, str) and image:
        return image
    return None


def _with_first_image(turns: list[tuple[str, str]], images: list[ImagePart]) -> Dialogue:
    messages: list[Message] = []
    pending = list(images)
    for role, content in turns:
        if role == "user":
            messages.append(Message.user(content, images=pending))
            pending = []
        elif role == "assistant":
            messages.append(Message.assistant(content))
        else:
            messages.append(Message.system(content))
    return Dialogue(messages=messages)
