"""One risk taxonomy for every source, and the tables that map each source's labels onto it.

Why these categories: each one is either named by at least two of the sources we load, or is
needed to keep a distinction that a judge depends on.

- `legal_advice`, `financial_advice`, `health_advice` and `political` stay separate because
  SafeMT, FigStep and MM-SafetyBench judge them by a special rule (safe only if the reply
  refuses, stays neutral or defers to a professional). `specialized_advice` takes advice
  whose domain is not given (VLGuard "professional advice", MLCommons S6, JailbreakBench
  "Expert advice").
- `hate_discrimination` merges hate speech with bias and stereotyping (SafeMT Bias, SIUO
  discrimination & stereotyping, VLGuard discrimination): every source that has one has the
  other under a different name. `harassment_threats` keeps threats, bullying and mockery
  (SafeMT Threat and Satire, HarmBench harassment_bullying) apart from group hate.
- `violence` takes SafeMT's Physical Harm as well as its Violence: the source label stays in
  `metadata["source_category"]` for anyone who needs the split.
- `dangerous_behavior` (risky stunts, unsafe practices: SIUO, VLGuard risky behavior,
  HarmBench "harmful") and `morality_religion` (SIUO morality and religion beliefs) have no
  MLCommons hazard; `to_mlcommons` returns None for them rather than a poor fit.
- `weapons_cbrn`, `child_safety`, `defamation` and `intellectual_property` mirror MLCommons
  hazards (S9, S4, S5, S8) so that every hazard has a home; `other` takes explicit "other"
  labels only. An unknown label is an error, never silently `other`.

Labels are looked up case-, space- and punctuation-insensitively, and a leading scenario number
(`01-Illegal_Activitiy`) is ignored, so the spellings found in the real files all match.
"""

from __future__ import annotations

import re
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from safeturn.errors import UnknownLabelError as UnknownLabelError


class Category(StrEnum):
    """The canonical risk categories (snake_case values)."""

    ILLEGAL_ACTIVITY = "illegal_activity"
    VIOLENCE = "violence"
    WEAPONS_CBRN = "weapons_cbrn"
    SELF_HARM = "self_harm"
    HATE_DISCRIMINATION = "hate_discrimination"
    HARASSMENT_THREATS = "harassment_threats"
    SEXUAL_CONTENT = "sexual_content"
    CHILD_SAFETY = "child_safety"
    FRAUD_DECEPTION = "fraud_deception"
    MALWARE_CYBER = "malware_cyber"
    PRIVACY = "privacy"
    ECONOMIC_HARM = "economic_harm"
    POLITICAL = "political"
    LEGAL_ADVICE = "legal_advice"
    FINANCIAL_ADVICE = "financial_advice"
    HEALTH_ADVICE = "health_advice"
    SPECIALIZED_ADVICE = "specialized_advice"
    ANIMAL_ABUSE = "animal_abuse"
    DEFAMATION = "defamation"
    INTELLECTUAL_PROPERTY = "intellectual_property"
    MISINFORMATION = "misinformation"
    DANGEROUS_BEHAVIOR = "dangerous_behavior"
    MORALITY_RELIGION = "morality_religion"
    OTHER = "other"


C = Category

ADVICE_CATEGORIES: Final[frozenset[Category]] = frozenset(
    {C.LEGAL_ADVICE, C.FINANCIAL_ADVICE, C.HEALTH_ADVICE, C.SPECIALIZED_ADVICE}
)
"""Categories that ask for advice, not harm (FigStep's "Methods to remedy high blood
pressure."): a reply is judged on whether it defers to a professional, but the request is no
harmful intent, so neither the judge's request pool nor the moderator's seeds call it harmful."""

MLCOMMONS_HAZARDS: Final[MappingProxyType[str, str]] = MappingProxyType(
    {
        "S1": "Violent Crimes",
        "S2": "Non-Violent Crimes",
        "S3": "Sex-Related Crimes",
        "S4": "Child Sexual Exploitation",
        "S5": "Defamation",
        "S6": "Specialized Advice",
        "S7": "Privacy",
        "S8": "Intellectual Property",
        "S9": "Indiscriminate Weapons",
        "S10": "Hate",
        "S11": "Suicide & Self-Harm",
        "S12": "Sexual Content",
        "S13": "Elections",
        "S14": "Code Interpreter Abuse",
    }
)
"""MLCommons AI safety hazard codes S1–S14 and their names (as used by Llama Guard 3)."""

_MLCOMMONS_TO_CATEGORY: dict[str, Category] = {
    "S1": C.VIOLENCE,
    "S2": C.ILLEGAL_ACTIVITY,
    "S3": C.SEXUAL_CONTENT,
    "S4": C.CHILD_SAFETY,
    "S5": C.DEFAMATION,
    "S6": C.SPECIALIZED_ADVICE,
    "S7": C.PRIVACY,
    "S8": C.INTELLECTUAL_PROPERTY,
    "S9": C.WEAPONS_CBRN,
    "S10": C.HATE_DISCRIMINATION,
    "S11": C.SELF_HARM,
    "S12": C.SEXUAL_CONTENT,
    "S13": C.POLITICAL,
    "S14": C.MALWARE_CYBER,
}

_CATEGORY_TO_MLCOMMONS: dict[Category, str | None] = {
    C.ILLEGAL_ACTIVITY: "S2",
    C.VIOLENCE: "S1",
    C.WEAPONS_CBRN: "S9",
    C.SELF_HARM: "S11",
    C.HATE_DISCRIMINATION: "S10",
    C.HARASSMENT_THREATS: "S1",  # threats of violence are violent crimes in the hazard list
    C.SEXUAL_CONTENT: "S12",
    C.CHILD_SAFETY: "S4",
    C.FRAUD_DECEPTION: "S2",
    C.MALWARE_CYBER: "S2",  # cyber crimes are non-violent crimes; S14 is interpreter abuse
    C.PRIVACY: "S7",
    C.ECONOMIC_HARM: None,
    C.POLITICAL: "S13",
    C.LEGAL_ADVICE: "S6",
    C.FINANCIAL_ADVICE: "S6",
    C.HEALTH_ADVICE: "S6",
    C.SPECIALIZED_ADVICE: "S6",
    C.ANIMAL_ABUSE: "S1",  # the hazard definition lists animal abuse under violent crimes
    C.DEFAMATION: "S5",
    C.INTELLECTUAL_PROPERTY: "S8",
    C.MISINFORMATION: None,  # only election misinformation (S13) is a hazard
    C.DANGEROUS_BEHAVIOR: None,
    C.MORALITY_RELIGION: None,
    C.OTHER: None,
}

SOURCE_LABELS: Final[MappingProxyType[str, MappingProxyType[str, Category]]] = MappingProxyType(
    {
        name: MappingProxyType(table)
        for name, table in {
            # SafeMT: the 17 scenarios, spelled as in its data files.
            "safemt": {
                "Economic Harm": C.ECONOMIC_HARM,
                "Legal Opinion": C.LEGAL_ADVICE,
                "Fraud": C.FRAUD_DECEPTION,
                "Illegal Activity": C.ILLEGAL_ACTIVITY,
                "Malware": C.MALWARE_CYBER,
                "Privacy Violation": C.PRIVACY,
                "Hate Speech": C.HATE_DISCRIMINATION,
                "Political": C.POLITICAL,
                "Physical Harm": C.VIOLENCE,
                "Threat": C.HARASSMENT_THREATS,
                "Violence": C.VIOLENCE,
                "Animal Abuse": C.ANIMAL_ABUSE,
                "Bias": C.HATE_DISCRIMINATION,
                "Satire": C.HARASSMENT_THREATS,  # mockery of people and groups
                "Sex": C.SEXUAL_CONTENT,
                "Health Consultation": C.HEALTH_ADVICE,
                "Financial Advice": C.FINANCIAL_ADVICE,
            },
            # SIUO: the 9 categories of siuo_gen.json / siuo_mcqa.json.
            "siuo": {
                "privacy violation": C.PRIVACY,
                "morality": C.MORALITY_RELIGION,
                "religion beliefs": C.MORALITY_RELIGION,
                "self-harm": C.SELF_HARM,
                "dangerous behavior": C.DANGEROUS_BEHAVIOR,
                "illegal activities & crime": C.ILLEGAL_ACTIVITY,
                "discrimination & stereotyping": C.HATE_DISCRIMINATION,
                "information misinterpretation": C.MISINFORMATION,
                "controversial topics, politics": C.POLITICAL,
            },
            # MM-SafetyBench: the 13 scenario file stems (typos as released, plus the
            # corrected spelling some mirrors use).
            "mmsafetybench": {
                "01-Illegal_Activitiy": C.ILLEGAL_ACTIVITY,
                "01-Illegal_Activity": C.ILLEGAL_ACTIVITY,
                "02-HateSpeech": C.HATE_DISCRIMINATION,
                "03-Malware_Generation": C.MALWARE_CYBER,
                "04-Physical_Harm": C.VIOLENCE,
                "05-EconomicHarm": C.ECONOMIC_HARM,
                "06-Fraud": C.FRAUD_DECEPTION,
                "07-Sex": C.SEXUAL_CONTENT,
                "08-Political_Lobbying": C.POLITICAL,
                "09-Privacy_Violence": C.PRIVACY,
                "10-Legal_Opinion": C.LEGAL_ADVICE,
                "11-Financial_Advice": C.FINANCIAL_ADVICE,
                "12-Health_Consultation": C.HEALTH_ADVICE,
                "13-Gov_Decision": C.POLITICAL,
            },
            # FigStep SafeBench: the 10 `category_name` values.
            "figstep": {
                "Illegal Activity": C.ILLEGAL_ACTIVITY,
                "Hate Speech": C.HATE_DISCRIMINATION,
                "Malware Generation": C.MALWARE_CYBER,
                "Physical Harm": C.VIOLENCE,
                "Fraud": C.FRAUD_DECEPTION,
                "Adult Content": C.SEXUAL_CONTENT,
                "Privacy Violation": C.PRIVACY,
                "Legal Opinion": C.LEGAL_ADVICE,
                "Financial Advice": C.FINANCIAL_ADVICE,
                "Health Consultation": C.HEALTH_ADVICE,
            },
            # VLGuard: `harmful_category`, and `category/subcategory` for the finer split.
            "vlguard": {
                "risky behavior": C.DANGEROUS_BEHAVIOR,
                "discrimination": C.HATE_DISCRIMINATION,
                "privacy": C.PRIVACY,
                "deception": C.MISINFORMATION,
                "risky behavior/violence": C.VIOLENCE,
                "risky behavior/sexually explicit": C.SEXUAL_CONTENT,
                "risky behavior/political": C.POLITICAL,
                "risky behavior/professional advice": C.SPECIALIZED_ADVICE,
                "discrimination/race": C.HATE_DISCRIMINATION,
                "discrimination/sex": C.HATE_DISCRIMINATION,
                "discrimination/other": C.HATE_DISCRIMINATION,
                "privacy/personal data": C.PRIVACY,
                "deception/disinformation": C.MISINFORMATION,
            },
            # DREAM (Kizna1ver/DREAM): `risk_category` of the `observe` lists in its VLGuard
            # release, i.e. the nine classes of its MRD prompt plus "Health", which its teacher
            # wrote for 26 risks (smoking images; VLGuard calls most of them professional
            # advice). The domain is given there, so it is health advice, not specialized.
            # "N/A" (one entry, an empty instruction) marks no risk and is not a category:
            # `train.dream_labels` drops it.
            "dream": {
                "Illegal activities": C.ILLEGAL_ACTIVITY,
                "Violence": C.VIOLENCE,  # DREAM's class also covers self-harm and weapons
                "Privacy": C.PRIVACY,
                "Discrimination": C.HATE_DISCRIMINATION,
                "Sexual content": C.SEXUAL_CONTENT,
                "Disinformation": C.MISINFORMATION,
                "Impersonating": C.FRAUD_DECEPTION,  # posing as a person or organisation
                "Political interference": C.POLITICAL,
                "Professional advice": C.SPECIALIZED_ADVICE,  # legal, medical or financial
                "Health": C.HEALTH_ADVICE,
            },
            # HarmBench: `SemanticCategory` (text and multimodal behaviors).
            "harmbench": {
                "chemical_biological": C.WEAPONS_CBRN,
                "illegal": C.ILLEGAL_ACTIVITY,
                "misinformation_disinformation": C.MISINFORMATION,
                "harmful": C.DANGEROUS_BEHAVIOR,
                "harassment_bullying": C.HARASSMENT_THREATS,
                "cybercrime_intrusion": C.MALWARE_CYBER,
                "copyright": C.INTELLECTUAL_PROPERTY,
            },
            # JailbreakBench: the 10 `category` values of its behaviors and artifacts.
            "jailbreakbench": {
                "Harassment/Discrimination": C.HATE_DISCRIMINATION,
                "Malware/Hacking": C.MALWARE_CYBER,
                "Physical harm": C.VIOLENCE,
                "Economic harm": C.ECONOMIC_HARM,
                "Fraud/Deception": C.FRAUD_DECEPTION,
                "Disinformation": C.MISINFORMATION,
                "Sexual/Adult content": C.SEXUAL_CONTENT,
                "Privacy": C.PRIVACY,
                "Expert advice": C.SPECIALIZED_ADVICE,
                "Government decision-making": C.POLITICAL,
            },
            # MLCommons hazards, by code and by name.
            "mlcommons": {
                **_MLCOMMONS_TO_CATEGORY,
                **{name: _MLCOMMONS_TO_CATEGORY[code] for code, name in MLCOMMONS_HAZARDS.items()},
            },
            # The canonical names themselves, for files that already use them.
            "canonical": {c.value: c for c in Category},
        }.items()
    }
)
"""Per source: label as written by the source → canonical category."""

_PREFIX = re.compile(r"^\d+\s*[-_. ]\s*")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalize_label(label: str) -> str:
    """The lookup key of a label: lowercase letters and digits only, scenario number dropped."""
    return _NON_ALNUM.sub("", _PREFIX.sub("", label.strip().lower()))


_INDEX: dict[str, dict[str, Category]] = {
    source: {normalize_label(label): cat for label, cat in table.items()}
    for source, table in SOURCE_LABELS.items()
}


def sources() -> tuple[str, ...]:
    """Names of the sources that have a label table."""
    return tuple(SOURCE_LABELS)


def canonical(source: str, label: str) -> Category:
    """Map one source label to the canonical category.

    Args:
        source: A key of `SOURCE_LABELS`, e.g. `safemt`, `siuo`, `mmsafetybench`.
        label: The label as the source writes it; case, spacing and punctuation are ignored.

    Returns:
        The canonical category.

    Raises:
        UnknownLabelError: The source has no table, or the label is not in it.

    Examples:
        >>> canonical("safemt", "Legal Opinion")
        <Category.LEGAL_ADVICE: 'legal_advice'>
        >>> canonical("mmsafetybench", "01-Illegal_Activitiy").value
        'illegal_activity'
    """
    table = _INDEX.get(source.strip().lower())
    if table is None:
        raise UnknownLabelError(
            f"taxonomy has no label table for source {source!r}; known: {', '.join(sources())}"
        )
    found = table.get(normalize_label(label))
    if found is None:
        known = ", ".join(repr(k) for k in SOURCE_LABELS[source.strip().lower()])
        raise UnknownLabelError(f"unknown {source} category label {label!r}; known labels: {known}")
    return found


def guess_category(label: str) -> Category | None:
    """Best-effort mapping of a label of unknown origin (canonical names first, then sources).

    Used by the generic loaders (question CSVs, `hf:` sets). Returns None when no table knows
    the label.
    """
    key = normalize_label(label)
    for source in ("canonical", *(s for s in SOURCE_LABELS if s != "canonical")):
        found = _INDEX[source].get(key)
        if found is not None:
            return found
    return None


def to_mlcommons(category: Category | str) -> str | None:
    """The nearest MLCommons hazard code (`S1`…`S14`), or None where no hazard fits.

    Raises:
        UnknownLabelError: `category` is not a canonical category.
    """
    try:
        cat = Category(category)
    except ValueError as exc:
        raise UnknownLabelError(f"{category!r} is not a canonical category") from exc
    return _CATEGORY_TO_MLCOMMONS[cat]


def mlcommons_name(code: str) -> str:
    """The hazard name of an MLCommons code, e.g. `S7` → `Privacy`."""
    try:
        return MLCOMMONS_HAZARDS[code.strip().upper()]
    except KeyError as exc:
        raise UnknownLabelError(f"{code!r} is not an MLCommons hazard code (S1–S14)") from exc
