"""SIUO: safe image + safe text whose combination is unsafe (167 items, 9 categories).

Two files share ids and images:

- `siuo_gen.json` (open-ended): `question_id, image, question, category, safety_warning,
  reference_answer`. The safety warning and the reference answer are what the SIUO judge
  reads; the warning goes to `metadata["safety_warning"]`, the answer to `reference_answer`.
- `siuo_mcqa.json` (multiple choice): the same items with `options` (A–D) and
  `correct_option` instead of the warning and the answer. The user turn lists the options
  and asks for a letter; `reference_answer` is the correct option's text and
  `metadata["correct_option"]` its letter. Ids get a `siuo-mcqa-` prefix.

Images are distributed apart from the JSON. They are looked for at `<root>/<image>` and
`<root>/images/<image>` (root: the JSON's folder unless given); a bare release has none, so
every sample is reported missing unless `text_only=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safeturn.data.base import LoadedSet, SetBuilder, as_record, read_json, req_str
from safeturn.data.registry import DATASETS
from safeturn.errors import SchemaError
from safeturn.schema import Dialogue, ImagePart, Message, Sample

SOURCE = "siuo"
MCQA_INSTRUCTION = "Answer with the letter of the best option only."


@DATASETS.register(
    "siuo",
    summary="SIUO safe inputs, unsafe output (gen/mcqa)",
    example="siuo:data/siuo_gen.json",
    argument="path",
)
def load_siuo(
    path: Path,
    *,
    text_only: bool = False,
    limit: int | None = None,
    root: Path | None = None,
) -> LoadedSet:
    """Load `siuo_gen.json` or `siuo_mcqa.json` (a folder loads `siuo_gen.json`)."""
    file = path / "siuo_gen.json" if path.is_dir() else path
    builder = SetBuilder(SOURCE, text_only=text_only, limit=limit)
    builder.use(file, root)
    data = read_json(file)
    if not isinstance(data, list):
        raise SchemaError(f"{file}: expected a JSON list of SIUO items")
    for index, raw in enumerate(data, start=1):
        if builder.full:
            break
        _add_item(builder, as_record(raw, builder.where(f"#{index}")), index)
    return builder.finish()


def _add_item(builder: SetBuilder, record: dict[str, Any], index: int) -> None:
    item = req_str(record, "question_id", builder.where(f"#{index}"))
    where = builder.where(item)
    label = req_str(record, "category", where)
    category = builder.category(SOURCE, label, item)
    image = req_str(record, "image", where)
    question = req_str(record, "question", where)
    metadata: dict[str, Any] = {"source_category": label, "image_name": image}
    if "options" in record:
        sample_id = f"siuo-mcqa-{item}"
        text, reference, correct = _mcqa(record, question, where)
        metadata.update(options=record["options"], correct_option=correct, format="mcqa")
    else:
        sample_id = f"siuo-{item}"
        text = question
        reference = req_str(record, "reference_answer", where)
        metadata.update(safety_warning=req_str(record, "safety_warning", where), format="gen")

    def build(parts: list[ImagePart]) -> Sample:
        return Sample(
            id=sample_id,
            source=SOURCE,
            category=category.value,
            strategy="none",
            harmful=True,
            seed_question=question,
            reference_answer=reference,
            dialogue=Dialogue(messages=[Message.user(text, images=parts)]),
            metadata=metadata,
        )

    candidates = (image, f"images/{image}")
    builder.add(item=item, sample_id=sample_id, images=[candidates], build=build)


def _mcqa(record: dict[str, Any], question: str, where: str) -> tuple[str, str, str]:
    options = record["options"]
    if not isinstance(options, dict) or not options:
        raise SchemaError(f"{where}: 'options' must be an object of letter → answer")
    lines = [question, ""]
    for letter, answer in options.items():
        if not isinstance(answer, str):
            raise SchemaError(f"{where}: option {letter!r} must be a string")
        lines.append(f"{letter}. {answer.strip()}")
    lines += ["", MCQA_INSTRUCTION]
    correct = req_str(record, "correct_option", where)
    if correct not in options:
        raise SchemaError(f"{where}: correct_option {correct!r} is not one of the options")
    return "\n".join(lines), str(options[correct]).strip(), correct
