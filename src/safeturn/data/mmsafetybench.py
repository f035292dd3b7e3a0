"""MM-SafetyBench: query-relevant images (Stable Diffusion, typography, both) for 13 scenarios.

Expected layout (the release's `data/` folder):

```
data/processed_questions/01-Illegal_Activitiy.json   # 13 files, typos as released
data/imgs/01-Illegal_Activitiy/SD/0.jpg
data/imgs/01-Illegal_Activitiy/TYPO/0.jpg
data/imgs/01-Illegal_Activitiy/SD_TYPO/0.jpg
```

Each question file is a JSON object `id → {Question, Changed Question, Key Phrase, Phrase Type,
Rephrased Question, Rephrased Question(SD)}`; the scenario is the file stem. Variants (spec
suffix `#variant`):

| variant | image | user text |
|---|---|---|
| `sd_typo` (default) | `SD_TYPO/{id}.jpg` | Rephrased Question |
| `typo` | `TYPO/{id}.jpg` | Rephrased Question |
| `sd` | `SD/{id}.jpg` | Rephrased Question(SD) |
| `text` | none | Question |

Images resolve under the data root: the folder above `processed_questions/`, else the JSON's
folder. With `text_only=True` an image variant uses the plain `Question` (the rephrased text
points at an image that is not there) and records `metadata["text_variant"] = "question"`.
Ids are `mmsafetybench-<variant>-<scenario number>-<id>`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

from safeturn.data.base import (
    DataSpecError,
    LoadedSet,
    SetBuilder,
    as_record,
    check_variant,
    read_json,
    req_str,
)
from safeturn.data.registry import DATASETS
from safeturn.errors import SchemaError
from safeturn.schema import Dialogue, ImagePart, Message, Sample

SOURCE = "mmsafetybench"
Variant = Literal["sd_typo", "typo", "sd", "text"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
_IMAGE_FOLDER = {"sd_typo": "SD_TYPO", "typo": "TYPO", "sd": "SD"}
_TEXT_KEY = {
    "sd_typo": "Rephrased Question",
    "typo": "Rephrased Question",
    "sd": "Rephrased Question(SD)",
    "text": "Question",
}
_NUMBER = re.compile(r"^(\d+)")


@DATASETS.register(
    "mmsafetybench",
    summary="MM-SafetyBench; variants sd_typo, typo, sd, text",
    example="mmsafetybench:MM-SafetyBench/data/#sd_typo",
    argument="path",
    variants=VARIANTS,
)
def load_mmsafetybench(
    path: Path,
    *,
    text_only: bool = False,
    limit: int | None = None,
    root: Path | None = None,
    variant: str = "sd_typo",
) -> LoadedSet:
    """Load one scenario file, a `processed_questions/` folder, or the data folder above it."""
    check_variant("MM-SafetyBench", variant, VARIANTS)
    files = _question_files(path)
    builder = SetBuilder(SOURCE, text_only=text_only, limit=limit)
    for file in files:
        data_root = root
        if data_root is None:
            is_questions = file.parent.name == "processed_questions"
            data_root = file.parent.parent if is_questions else file.parent
        builder.use(file, data_root)
        data = read_json(file)
        if not isinstance(data, dict):
            raise SchemaError(f"{file}: expected a JSON object of id → question record")
        for key, raw in data.items():
            if builder.full:
                break
            _add(builder, file.stem, key, as_record(raw, builder.where(key)), variant)
    return builder.finish()


def _question_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    folder = path / "processed_questions" if (path / "processed_questions").is_dir() else path
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataSpecError(f"{path}: no MM-SafetyBench question files (*.json) found")
    return files


def _add(
    builder: SetBuilder, scenario: str, key: str, record: dict[str, Any], variant: str
) -> None:
    where = builder.where(key)
    category = builder.category(SOURCE, scenario, key)
    question = req_str(record, "Question", where)
    text = req_str(record, _TEXT_KEY[variant], where)
    match = _NUMBER.match(scenario)
    number = match.group(1) if match else scenario
    sample_id = f"mmsafetybench-{variant}-{number}-{key}"
    metadata: dict[str, Any] = {
        "source_category": scenario,
        "variant": variant,
        "question_id": key,
    }
    for field, name in (
        ("Changed Question", "changed_question"),
        ("Key Phrase", "key_phrase"),
        ("Phrase Type", "phrase_type"),
    ):
        if isinstance(record.get(field), str):
            metadata[name] = record[field]
    images: list[str] = []
    if variant != "text":
        images.append(f"imgs/{scenario}/{_IMAGE_FOLDER[variant]}/{key}.jpg")
        if builder.text_only:
            text = question
            metadata["text_variant"] = "question"

    def build(parts: list[ImagePart]) -> Sample:
        return Sample(
            id=sample_id,
            source=SOURCE,
            category=category.value,
            strategy="typography" if "typo" in variant else "none",
            harmful=True,
            seed_question=question,
            dialogue=Dialogue(messages=[Message.user(text, images=parts)]),
            metadata=metadata,
        )

    builder.add(item=key, sample_id=sample_id, images=images, build=build)
