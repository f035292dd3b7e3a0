"""The keyword-filter baseline: what a blocklist catches, for the evaluation to compare against.

It reads the same text the moderator reads (every user turn and the OCR text of every image),
so the comparison isolates learning from access. A dialogue's score is the number of distinct
keywords it contains; its category is the one with the most hits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import MappingProxyType
from typing import Final

from safeturn.taxonomy import Category

C = Category

_WORDS: Final[dict[Category, str]] = {
    C.ILLEGAL_ACTIVITY: (
        "illegal|drugs|meth|cocaine|heroin|smuggle|smuggling|launder|laundering|"
        "counterfeit|traffic|trafficking|steal|theft|shoplift|burglary|rob|"
        "robbery|evade|bribe|black market"
    ),
    C.VIOLENCE: ("kill|murder|assault|attack|torture|hurt|injure|stab|shoot|strangle|kidnap|abuse"),
    C.WEAPONS_CBRN: (
        "bomb|explosive|weapon|gun|firearm|nerve agent|sarin|anthrax|bioweapon|"
        "chemical weapon|poison|ricin|grenade|ammunition"
    ),
    C.SELF_HARM: "suicide|self-harm|cut myself|overdose|kill myself",
    C.HATE_DISCRIMINATION: (
        "racist|racism|inferior|slur|hate|nazi|supremacy|discriminate|discrimination|stereotype"
    ),
    C.HARASSMENT_THREATS: (
        "harass|harassment|bully|bullying|threaten|threat|intimidate|stalk|humiliate|mock"
    ),
    C.SEXUAL_CONTENT: "porn|pornographic|explicit|nude|sexual|erotic|sex",
    C.CHILD_SAFETY: "child abuse|minor|underage|grooming",
    C.FRAUD_DECEPTION: (
        "fraud|scam|phishing|fake|forge|forgery|impersonate|deceive|ponzi|identity theft"
    ),
    C.MALWARE_CYBER: (
        "malware|virus|ransomware|hack|hacking|exploit|keylogger|botnet|ddos|trojan|password|crack"
    ),
    C.PRIVACY: (
        "personal information|home address|social security|dox|doxx|spy|"
        "track someone|surveillance|private data"
    ),
    C.MISINFORMATION: "misinformation|disinformation|propaganda|conspiracy|hoax",
    C.POLITICAL: "election|campaign|vote|political|lobbying",
    C.DANGEROUS_BEHAVIOR: "dangerous|reckless|without getting caught|untraceable",
}

KEYWORDS: Final[MappingProxyType[Category, tuple[str, ...]]] = MappingProxyType(
    {category: tuple(words.split("|")) for category, words in _WORDS.items()}
)
"""Blocklist words per category (matched as whole words, case-insensitively)."""

_PATTERNS = {
    category: re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
    for category, words in KEYWORDS.items()
}


def keyword_hits(texts: Iterable[str]) -> dict[Category, set[str]]:
    """The distinct keywords found in `texts`, per category (categories without hits left out)."""
    joined = "\n".join(texts)
    found: dict[Category, set[str]] = {}
    for category, pattern in _PATTERNS.items():
        words = {m.group(0).lower() for m in pattern.finditer(joined)}
        if words:
            found[category] = words
    return found


def keyword_score(hits: dict[Category, set[str]]) -> tuple[int, Category | None]:
    """(distinct keywords, the category with the most of them) for one dialogue."""
    if not hits:
        return 0, None
    total = len(set().union(*hits.values()))
    return total, max(hits, key=lambda c: len(hits[c]))
