"""The refusal a guard returns in place of a reply: short, plain, and still helpful.

A bare "I can't help with that" teaches users nothing and reads as a malfunction. The refusal
names the concern in everyday words and offers the part of the topic that is still fine, so a
benign user who tripped the moderator can rephrase instead of giving up.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final, NamedTuple

from safeturn.taxonomy import Category


class Concern(NamedTuple):
    """How a refusal describes one category: what worries us, what we can still do."""

    concern: str
    offer: str


C = Category

CONCERNS: Final[MappingProxyType[Category, Concern]] = MappingProxyType(
    {
        C.ILLEGAL_ACTIVITY: Concern(
            "help with breaking the law",
            "explaining what the law says or where to find legal help",
        ),
        C.VIOLENCE: Concern(
            "help with hurting someone",
            "de-escalation, personal safety, first aid, or how to get help quickly",
        ),
        C.WEAPONS_CBRN: Concern(
            "help with making or using weapons or dangerous substances",
            "their history, the policy debate around them, or emergency safety information",
        ),
        C.SELF_HARM: Concern(
            "information that could be used for self-harm",
            "talking through how you feel, coping ideas, or finding a crisis line near you",
        ),
        C.HATE_DISCRIMINATION: Concern(
            "content that demeans people for who they are",
            "understanding where prejudice comes from or how to respond to it",
        ),
        C.HARASSMENT_THREATS: Concern(
            "threatening, harassing or tracking a person",
            "responding to harassment, documenting it, or reporting it",
        ),
        C.SEXUAL_CONTENT: Concern(
            "explicit sexual content",
            "factual sexual-health and relationship information",
        ),
        C.CHILD_SAFETY: Concern(
            "content that could put a child at risk",
            "keeping children safe online and how to report concerns",
        ),
        C.FRAUD_DECEPTION: Concern(
            "help with deceiving or scamming people",
            "spotting scams, protecting your accounts, or reporting fraud",
        ),
        C.MALWARE_CYBER: Concern(
            "help with attacking computer systems",
            "securing your own systems or learning security in a legal lab",
        ),
        C.PRIVACY: Concern(
            "finding or exposing private information about a person",
            "protecting your own data or understanding your privacy rights",
        ),
        C.ECONOMIC_HARM: Concern(
            "a scheme that could take money from people unfairly",
            "how such schemes work so you can avoid them, or general budgeting",
        ),
        C.POLITICAL: Concern(
            "one-sided political persuasion or misleading election content",
            "a balanced summary of the main positions or official voting information",
        ),
        C.LEGAL_ADVICE: Concern(
            "a legal decision that needs a qualified lawyer",
            "general information about the law and what to ask a lawyer or legal-aid service",
        ),
        C.FINANCIAL_ADVICE: Concern(
            "a financial decision that needs a licensed adviser",
            "explaining the options, risks and fees in general terms",
        ),
        C.HEALTH_ADVICE: Concern(
            "a medical decision that needs a doctor or pharmacist",
            "general health information and when to seek care (call emergency services if it "
            "is urgent)",
        ),
        C.SPECIALIZED_ADVICE: Concern(
            "advice that needs a qualified professional",
            "background information and which kind of professional to ask",
        ),
        C.ANIMAL_ABUSE: Concern(
            "harming animals",
            "humane animal care or how to report cruelty",
        ),
        C.DEFAMATION: Concern(
            "false claims that could damage someone's reputation",
            "what is publicly verified, or clearly labelled opinion",
        ),
        C.INTELLECTUAL_PROPERTY: Concern(
            "copying or passing off someone else's protected work",
            "a summary, a short quotation for commentary, or your own original version",
        ),
        C.MISINFORMATION: Concern(
            "false or misleading information presented as fact",
            "what the evidence shows and how to check sources",
        ),
        C.DANGEROUS_BEHAVIOR: Concern(
            "something that could get someone seriously hurt",
            "the risks and safer alternatives",
        ),
        C.MORALITY_RELIGION: Concern(
            "content that attacks a belief or its followers",
            "a respectful explanation of the beliefs and the different views on them",
        ),
        C.OTHER: Concern(
            "something that could cause harm",
            "the safe parts of the topic",
        ),
    }
)

_GENERIC = Concern("something that could cause harm", "the safe parts of the topic")

FAILURE_TEXT: Final = (
    "I can't answer right now: the safety check that screens this conversation is unavailable. "
    "Please try again in a moment."
)
"""Returned when a guard component fails and the guard is set to fail closed."""


def refusal_text(category: Category | None) -> str:
    """A refusal that names the concern of `category` and offers what can still be done."""
    concern = _GENERIC if category is None else CONCERNS[category]
    return (
        f"I can't help with this: the conversation is heading towards {concern.concern}. "
        f"I'm happy to help with {concern.offer} instead."
    )
