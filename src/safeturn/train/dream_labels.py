"""DREAM's released risk labels (`observe` lists) as safeturn risk records.

DREAM's VLGuard release (`train_llava_format.json`) already carries what `safeturn synth mrd`
asks a teacher for: the gpt turn that answers an unsafe instruction holds `observe`, a list of
`{malicious_content, source, risk_category}`. Converting it gives the risk JSONL that
`synth risk-sft` and RLAIF's `risks:` read, without a teacher model, and with the paper's own
labels. The VLGuard loader keeps each exchange's list in `metadata["observe"]`, so the records
are keyed by the very sample ids that `vlguard:PATH[#variant]` produces.

Categories go through the taxonomy's `dream` table and sources through the MRD parser's
spellings (`text instructions`, `text in the image`, `image content: non-textual …`). An entry
whose `risk_category` is `N/A` marks "no risk" and is dropped (counted); any other unknown
category or source is an error that names it and the sample, since a silent `other` would
train the model to name the wrong risk.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from safeturn.errors import SchemaError
from safeturn.schema import Sample
from safeturn.synth.mrd import risk_source
from safeturn.synth.risks import Risk, RiskRecord
from safeturn.taxonomy import UnknownLabelError, canonical, normalize_label

TAXONOMY_SOURCE = "dream"
"""The taxonomy table of DREAM's `risk_category` labels."""
TEACHER = "dream-release"
"""`RiskRecord.teacher` of converted records: the labels come from DREAM's released file."""
NO_RISK_LABELS = frozenset({"na"})
"""Normalized `risk_category` values that mean "no risk observed" (`N/A` in the release)."""


class ObserveStats(BaseModel):
    """What a conversion found, for the CLI table."""

    samples: int = 0
    risks: int = 0
    no_risk_entries: int = 0
    """`N/A` entries dropped."""
    samples_without_risks: int = 0
    by_category: dict[str, int] = Field(default_factory=dict)
    by_source: dict[str, int] = Field(default_factory=dict)


def observe_risk(entry: Any, where: str) -> Risk | None:
    """One `observe` entry as a `Risk`, or None for an `N/A` (no risk) entry.

    Raises:
        SchemaError: The entry is not an object with the three text fields, or its source is
            unknown (`where` and the value named).
        UnknownLabelError: Its `risk_category` is not a released DREAM label.
    """
    if not isinstance(entry, Mapping):
        raise SchemaError(f"{where}: an observe entry must be an object, got {entry!r}")
    fields = {}
    for key in ("malicious_content", "source", "risk_category"):
        value = entry.get(key)
        if not isinstance(value, str):
            raise SchemaError(f"{where}: observe entry has no text {key!r}: {dict(entry)!r}")
        fields[key] = value.strip()
    label = fields["risk_category"]
    if normalize_label(label) in NO_RISK_LABELS:
        return None
    try:
        category = canonical(TAXONOMY_SOURCE, label)
    except UnknownLabelError as exc:
        raise UnknownLabelError(f"{where}: {exc}") from exc
    try:
        source = risk_source(fields["source"])
    except ValueError as exc:
        raise SchemaError(f"{where}: {exc}") from exc
    if not fields["malicious_content"]:
        raise SchemaError(f"{where}: observe entry ({label}) has an empty malicious_content")
    return Risk(content=fields["malicious_content"], source=source, category=category)


def observe_risks(observe: Any, where: str) -> tuple[list[Risk], int]:
    """A released `observe` list as risks, and how many `N/A` entries it dropped.

    Raises:
        SchemaError: `observe` is not a list, or an entry is malformed.
        UnknownLabelError: An entry's category is not a released DREAM label.
    """
    if observe is None:
        return [], 0
    if not isinstance(observe, list):
        raise SchemaError(f"{where}: 'observe' must be a list, got {type(observe).__name__}")
    risks: list[Risk] = []
    dropped = 0
    for number, entry in enumerate(observe, start=1):
        risk = observe_risk(entry, f"{where} observe[{number}]")
        if risk is None:
            dropped += 1
        else:
            risks.append(risk)
    return risks, dropped


def observe_records(samples: Iterable[Sample]) -> tuple[list[RiskRecord], ObserveStats]:
    """One `RiskRecord` per sample, from the `observe` list the VLGuard loader kept.

    A sample without risks (a benign exchange, or only `N/A`) still gets a record: that tells
    `synth risk-sft` the sample was labelled and nothing was found, rather than "not run".

    Raises:
        SchemaError: A sample has no `observe` metadata (not loaded by `vlguard:`), or an
            entry is malformed.
        UnknownLabelError: An entry's category is not a released DREAM label.
    """
    records: list[RiskRecord] = []
    stats = ObserveStats()
    categories: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    for sample in samples:
        if "observe" not in sample.metadata:
            raise SchemaError(
                f"sample {sample.id!r} has no DREAM observe list; load the release with "
                "vlguard:PATH (train_llava_format.json)"
            )
        risks, dropped = observe_risks(sample.metadata["observe"], f"sample {sample.id!r}")
        records.append(RiskRecord(sample_id=sample.id, risks=risks, teacher=TEACHER))
        stats.samples += 1
        stats.risks += len(risks)
        stats.no_risk_entries += dropped
        stats.samples_without_risks += not risks
        categories.update(risk.category.value for risk in risks)
        sources.update(risk.source for risk in risks)
    stats.by_category = dict(categories.most_common())
    stats.by_source = dict(sources.most_common())
    return records, stats
