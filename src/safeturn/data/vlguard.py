"""VLGuard in LLaVA format, as released with DREAM (`train_llava_format.json`).

Each record: `id, image, safe` (is the *image* safe), `harmful_category` and
`harmful_subcategory` for unsafe images, and `conversations`: `{from: human|gpt, value, safe}`
turns whose first human value holds an `<image>` placeholder. The gpt turn that answers an
unsafe instruction carries `observe`: the risks DREAM's teacher found, each
`{malicious_content, source, risk_category}`: the ground truth for risk disentanglement.

What the file holds: an unsafe-image record has one exchange (its instruction is unsafe); a
safe-image record has two independent exchanges, one with a safe and one with an unsafe
instruction, in either order. Variants (spec suffix `#variant`):

- `record` (default): one sample per record, `harmful = not safe` (1,023 unsafe, 977 safe in
  the DREAM file). An unsafe record gives its instruction; a safe record gives its *safe*
  instruction, so a safe sample really is benign (an over-refusal probe).
- `instructions`: one sample per instruction; `harmful` is True unless both the image and the
  instruction are safe. This is VLGuard's own safe-safe / safe-unsafe / unsafe split.

The `<image>` placeholder is removed and the image put where it stood (before or after the
text). The gpt answer becomes `reference_answer`, its `observe` list `metadata["observe"]`.
Images resolve under the root (default: the JSON's folder). The file repeats one id
(`Ads_303871`, two records), so a repeated id gets a `-2`, `-3`… suffix in file order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from safeturn.data.base import (
    LoadedSet,
    SetBuilder,
    as_record,
    check_variant,
    opt_str,
    parse_bool,
    read_json,
    req_str,
)
from safeturn.data.registry import DATASETS
from safeturn.errors import SchemaError
from safeturn.schema import Dialogue, ImagePart, Message, Sample, TextPart
from safeturn.taxonomy import Category

SOURCE = "vlguard"
IMAGE_TOKEN = "<image>"
Variant = Literal["record", "instructions"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)


@DATASETS.register(
    "vlguard",
    summary="VLGuard LLaVA format; variants record, instructions",
    example="vlguard:train_llava_format.json#instructions",
    argument="path",
    variants=VARIANTS,
)
def load_vlguard(
    path: Path,
    *,
    text_only: bool = False,
    limit: int | None = None,
    root: Path | None = None,
    variant: str = "record",
) -> LoadedSet:
    """Load a LLaVA-format VLGuard/DREAM JSON file."""
    check_variant("VLGuard", variant, VARIANTS)
    builder = SetBuilder(SOURCE, text_only=text_only, limit=limit)
    builder.use(path, root)
    data = read_json(path)
    if not isinstance(data, list):
        raise SchemaError(f"{path}: expected a JSON list of LLaVA-format records")
    seen: Counter[str] = Counter()
    for index, raw in enumerate(data, start=1):
        if builder.full:
            break
        record = as_record(raw, builder.where(f"#{index}"))
        record_id = req_str(record, "id", builder.where(f"#{index}"))
        seen[record_id] += 1
        base_id = f"vlguard-{record_id}" + (f"-{seen[record_id]}" if seen[record_id] > 1 else "")
        _add_record(builder, record, record_id, base_id, variant)
    return builder.finish()


def _add_record(
    builder: SetBuilder, record: dict[str, Any], record_id: str, base_id: str, variant: str
) -> None:
    where = builder.where(record_id)
    image = req_str(record, "image", where)
    image_safe = parse_bool(record["safe"], where, "safe") if "safe" in record else None
    label, category = _category(builder, record, record_id)
    exchanges = _exchanges(record.get("conversations"), where)
    if variant == "record":
        if image_safe:
            chosen = [e for e in exchanges if e[2] is not False][:1] or exchanges[:1]
        else:
            chosen = exchanges[:1]
    else:
        chosen = exchanges
    for number, exchange in enumerate(chosen, start=1):
        if builder.full:
            return
        instruction_safe = exchange[2]
        if variant == "record":
            sample_id = base_id
            # a safe image can still come with an unsafe instruction (when it has no safe one)
            harmful = None if image_safe is None else (not image_safe or instruction_safe is False)
        else:
            sample_id = f"{base_id}-q{number}"
            labels = {image_safe, instruction_safe} - {None}
            harmful = (False in labels) if labels else None
        metadata: dict[str, Any] = {
            "record_id": record_id,
            "image_name": image,
            "image_safe": image_safe,
            "instruction_safe": instruction_safe,
            "observe": exchange[3],
        }
        if label is not None:
            metadata["source_category"] = label
        sample = _SampleSpec(sample_id, category, harmful, exchange[0], exchange[1], metadata)
        builder.add(item=record_id, sample_id=sample_id, images=[image], build=sample.build)


@dataclass(frozen=True)
class _SampleSpec:
    sample_id: str
    category: Category | None
    harmful: bool | None
    instruction: str
    answer: str | None
    metadata: dict[str, Any]

    def build(self, parts: list[ImagePart]) -> Sample:
        return Sample(
            id=self.sample_id,
            source=SOURCE,
            category=None if self.category is None else self.category.value,
            strategy="none",
            harmful=self.harmful,
            seed_question=self.instruction.replace(IMAGE_TOKEN, "").strip(),
            reference_answer=self.answer,
            dialogue=Dialogue(messages=[_user_message(self.instruction, parts)]),
            metadata=self.metadata,
        )


def _category(
    builder: SetBuilder, record: dict[str, Any], record_id: str
) -> tuple[str | None, Category | None]:
    where = builder.where(record_id)
    main = opt_str(record, "harmful_category", where)
    if main is None:
        return None, None
    sub = opt_str(record, "harmful_subcategory", where)
    label = main if sub is None else f"{main}/{sub}"
    return label, builder.category(SOURCE, label, record_id)


Exchange = tuple[str, str | None, bool | None, list[Any]]


def _exchanges(value: Any, where: str) -> list[Exchange]:
    """(instruction, answer, instruction_safe, observe) per human turn."""
    if not isinstance(value, list) or not value:
        raise SchemaError(f"{where}: 'conversations' must be a non-empty list")
    turns = [as_record(t, f"{where} conversations[{i}]") for i, t in enumerate(value)]
    out: list[Exchange] = []
    for i, turn in enumerate(turns):
        at = f"{where} conversations[{i}]"
        speaker = req_str(turn, "from", at)
        if speaker not in ("human", "gpt"):
            raise SchemaError(f"{at}: 'from' must be 'human' or 'gpt', got {speaker!r}")
        if speaker == "gpt":
            continue
        text = req_str(turn, "value", at)
        safe = parse_bool(turn["safe"], at, "safe") if "safe" in turn else None
        answer: str | None = None
        observe: list[Any] = []
        if i + 1 < len(turns) and turns[i + 1].get("from") == "gpt":
            reply = turns[i + 1]
            answer = req_str(reply, "value", f"{where} conversations[{i + 1}]", empty_ok=True)
            observe = reply.get("observe") or []
            if not isinstance(observe, list):
                raise SchemaError(f"{where} conversations[{i + 1}]: 'observe' must be a list")
        out.append((text, answer, safe, observe))
    if not out:
        raise SchemaError(f"{where}: 'conversations' has no human turn")
    return out


def _user_message(text: str, images: list[ImagePart]) -> Message:
    """A user message with the image where `<image>` stood (before the text if absent)."""
    before, token, after = text.partition(IMAGE_TOKEN)
    if not token:
        return Message.user(text.strip(), images=images)
    parts: list[TextPart | ImagePart] = []
    if before.strip():
        parts.append(TextPart(text=before.strip()))
    parts.extend(images)
    rest = after.replace(IMAGE_TOKEN, "").strip()
    if rest:
        parts.append(TextPart(text=rest))
    return Message(role="user", parts=parts)
