"""Disentangled risks of one (image, text) sample: what DREAM's teacher lists and a verifier checks.

Naming where a risk comes from (the instruction, the text's content, the image, or text drawn in
the image) is what lets a risk-aware SFT response say *why* it declines, and lets the RLAIF judge
score a reply against the risks actually present rather than a generic notion of harm. The file
format is one `RiskRecord` per line (JSONL), keyed by the sample id of the source dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from safeturn.errors import SchemaError
from safeturn.taxonomy import Category

RiskSource = Literal["text_instruction", "text_content", "image_content", "text_in_image"]
RISK_SOURCES: tuple[RiskSource, ...] = (
    "text_instruction",
    "text_content",
    "image_content",
    "text_in_image",
)


class Risk(BaseModel):
    """One risk the teacher observed, with the verifier's decision once it has run."""

    model_config = ConfigDict(extra="forbid")

    content: str = Field(min_length=1)
    """What the risk is, in one sentence (no harmful detail needed)."""
    source: RiskSource
    """Where it comes from: the instruction itself, other text, the image, or text in the image."""
    category: Category
    verified: bool | None = None
    """True/False after the verification pass; None before it ran."""
    verify_note: str = ""

    @field_validator("content")
    @classmethod
    def _strip(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise ValueError("risk content is empty")
        return stripped


class RiskRecord(BaseModel):
    """The disentangled risks of one sample."""

    model_config = ConfigDict(extra="forbid")

    sample_id: str
    risks: list[Risk] = Field(default_factory=list)
    """Every risk the teacher listed; `kept()` gives those the verifier did not reject."""
    teacher: str
    verifier: str | None = None

    def kept(self) -> list[Risk]:
        """Risks that passed verification (all of them when no verifier ran)."""
        return [r for r in self.risks if r.verified is not False]


def write_risk_records(records: Iterable[RiskRecord], path: Path) -> int:
    """Write records as JSONL (parent folders created); returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.model_dump_json() + "\n")
            count += 1
    return count


def read_risk_records(path: Path) -> Iterator[RiskRecord]:
    """Read a risk JSONL written by `write_risk_records`.

    Raises:
        SchemaError: The file is missing, or a line is not a valid record (line number named).
    """
    if not path.is_file():
        raise SchemaError(f"risk file {path} does not exist")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield RiskRecord.model_validate_json(line)
            except ValidationError as exc:
                raise SchemaError(f"{path}:{number}: not a risk record: {exc}") from exc


def risks_by_sample(path: Path) -> dict[str, RiskRecord]:
    """Records keyed by sample id; a later line for the same id replaces an earlier one."""
    return {record.sample_id: record for record in read_risk_records(path)}
