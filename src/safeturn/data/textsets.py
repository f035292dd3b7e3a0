"""Text prompt sets in CSV form: XSTest, HarmBench, AdvBench and generic question lists.

- XSTest (`xstest_prompts.csv`: `id, prompt, type, label, focus, note`): `label` safe/unsafe
  gives `harmful`. XSTest types (homonyms, safe contexts…) are not risk categories, so
  `category` stays None and the type is kept in `metadata["type"]`.
- HarmBench text behaviors (`Behavior, FunctionalCategory, SemanticCategory, Tags,
  ContextString, BehaviorID`): a contextual behavior's user turn is its context, a `---` line,
  then the behavior, as HarmBench prompts it. Multimodal behaviors add `ImageFileName`; the
  image is looked for at `<root>/<name>`, `images/<name>` and `multimodal_behavior_images/<name>`
  and is usually missing (the release ships names only).
- AdvBench: the original `goal,target` CSV or HarmBench's copy (`Behavior,…,BehaviorID`). No
  categories; ids are the 1-based row numbers (`advbench-1` is HarmBench's `advbench_1`).
- Generic questions (do-not-answer style): a `question` column, optional `id`, `category`
  (canonical or any source label; unknown labels become `other`) and `harmful` (true/false or
  safe/unsafe; harmful when absent, since such lists are refusal probes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safeturn.data.base import LoadedSet, SetBuilder, parse_bool, read_csv, req_str
from safeturn.data.registry import DATASETS
from safeturn.errors import SchemaError
from safeturn.schema import Dialogue, ImagePart, Message, Sample
from safeturn.taxonomy import Category, guess_category

_ImageRef = tuple[str, ...]


def _sample(
    builder: SetBuilder,
    *,
    item: str,
    sample_id: str,
    text: str,
    harmful: bool | None,
    category: Category | None,
    metadata: dict[str, Any],
    seed: str | None = None,
    reference: str | None = None,
    image: _ImageRef | None = None,
) -> None:
    def build(parts: list[ImagePart]) -> Sample:
        return Sample(
            id=sample_id,
            source=builder.loaded.source,
            category=None if category is None else category.value,
            strategy="none",
            harmful=harmful,
            seed_question=seed if seed is not None else text,
            reference_answer=reference,
            dialogue=Dialogue(messages=[Message.user(text, images=parts)]),
            metadata=metadata,
        )

    images = [image] if image is not None else []
    builder.add(item=item, sample_id=sample_id, images=images, build=build)


@DATASETS.register(
    "xstest",
    summary="XSTest safe/unsafe prompts (over-refusal)",
    example="xstest:xstest_prompts.csv",
    argument="path",
)
def load_xstest(
    path: Path, *, text_only: bool = False, limit: int | None = None, root: Path | None = None
) -> LoadedSet:
    """Load `xstest_prompts.csv` (250 safe and 200 unsafe prompts)."""
    builder = SetBuilder("xstest", text_only=text_only, limit=limit)
    builder.use(path, root)
    for number, row in enumerate(read_csv(path, required=("id", "prompt", "type", "label")), 1):
        if builder.full:
            break
        where = builder.where(f"row {number}")
        item = req_str(row, "id", where)
        label = row["label"].strip().lower()
        if label not in ("safe", "unsafe"):
            raise SchemaError(f"{builder.where(item)}: label must be safe or unsafe, got {label!r}")
        metadata = {k: row[k] for k in ("type", "focus", "note") if row.get(k)}
        metadata["label"] = label
        text = req_str(row, "prompt", builder.where(item))
        _sample(
            builder,
            item=item,
            sample_id=f"xstest-{item}",
            text=text,
            harmful=label == "unsafe",
            category=None,
            metadata=metadata,
        )
    return builder.finish()


@DATASETS.register(
    "harmbench",
    summary="HarmBench behaviors",
    example="harmbench:harmbench_behaviors_text_all.csv",
    argument="path",
)
def load_harmbench(
    path: Path, *, text_only: bool = False, limit: int | None = None, root: Path | None = None
) -> LoadedSet:
    """Load a HarmBench behaviors CSV, text or multimodal."""
    builder = SetBuilder("harmbench", text_only=text_only, limit=limit)
    builder.use(path, root)
    rows = read_csv(path, required=("Behavior", "BehaviorID", "SemanticCategory"))
    for number, row in enumerate(rows, 1):
        if builder.full:
            break
        item = req_str(row, "BehaviorID", builder.where(f"row {number}"))
        where = builder.where(item)
        behavior = req_str(row, "Behavior", where)
        label = req_str(row, "SemanticCategory", where)
        context = row.get("ContextString", "").strip()
        text = f"{context}\n\n---\n\n{behavior}" if context else behavior
        metadata: dict[str, Any] = {"source_category": label}
        for key in ("FunctionalCategory", "Tags", "ImageDescription"):
            if row.get(key):
                metadata[key] = row[key]
        if context:
            metadata["context"] = context
        image_name = row.get("ImageFileName", "").strip()
        image = None
        if image_name:
            metadata["image_name"] = image_name
            image = (image_name, f"images/{image_name}", f"multimodal_behavior_images/{image_name}")
        _sample(
            builder,
            item=item,
            sample_id=f"harmbench-{item}",
            text=text,
            seed=behavior,
            harmful=True,
            category=builder.category("harmbench", label, item),
            metadata=metadata,
            image=image,
        )
    return builder.finish()


@DATASETS.register(
    "advbench",
    summary="AdvBench harmful behaviors",
    example="advbench:harmful_behaviors.csv",
    argument="path",
)
def load_advbench(
    path: Path, *, text_only: bool = False, limit: int | None = None, root: Path | None = None
) -> LoadedSet:
    """Load AdvBench harmful behaviors (`goal,target`, or HarmBench's `Behavior` copy)."""
    builder = SetBuilder("advbench", text_only=text_only, limit=limit)
    builder.use(path, root)
    rows = read_csv(path, required=())
    if rows and "goal" not in rows[0] and "Behavior" not in rows[0]:
        raise SchemaError(f"{path}: expected a 'goal' (or 'Behavior') column")
    for number, row in enumerate(rows, 1):
        if builder.full:
            break
        where = builder.where(f"row {number}")
        goal = req_str(row, "goal" if "goal" in row else "Behavior", where)
        metadata: dict[str, Any] = {"row": number}
        target = row.get("target", "").strip()
        if target:
            metadata["target"] = target
        _sample(
            builder,
            item=f"row {number}",
            sample_id=f"advbench-{number}",
            text=goal,
            harmful=True,
            category=None,
            metadata=metadata,
        )
    return builder.finish()


@DATASETS.register(
    "questions",
    summary="any CSV with a question column",
    example="questions:my_questions.csv",
    argument="path",
)
def load_questions(
    path: Path, *, text_only: bool = False, limit: int | None = None, root: Path | None = None
) -> LoadedSet:
    """Load a generic question CSV (a `question` column; `id`, `category`, `harmful` optional)."""
    builder = SetBuilder("questions", text_only=text_only, limit=limit)
    builder.use(path, root)
    for number, row in enumerate(read_csv(path, required=("question",)), 1):
        if builder.full:
            break
        item = row.get("id", "").strip() or str(number)
        where = builder.where(f"row {number}")
        metadata: dict[str, Any] = {"file": path.name}
        category = None
        label = row.get("category", "").strip()
        if label:
            metadata["source_category"] = label
            category = guess_category(label) or Category.OTHER
        harmful = True
        if row.get("harmful", "").strip():
            harmful = parse_bool(row["harmful"], where, "harmful")
        elif row.get("label", "").strip():
            harmful = _label_harmful(row["label"], where)
        _sample(
            builder,
            item=item,
            sample_id=f"questions-{path.stem}-{item}",
            text=req_str(row, "question", where),
            harmful=harmful,
            category=category,
            metadata=metadata,
        )
    return builder.finish()


def _label_harmful(label: str, where: str) -> bool:
    text = label.strip().lower()
    if text in ("unsafe", "harmful", "1", "true"):
        return True
    if text in ("safe", "benign", "harmless", "0", "false"):
        return False
    raise SchemaError(f"{where}: label must be safe/unsafe or harmful/benign, got {label!r}")
