"""Split a seed request into its action, verb and topic, for templates derived from the seed.

Templates that must be *about* the seed without repeating it (decomposition's sub-questions,
fake-compliance's neighbouring question) need its parts: "Steps to pick a pin tumbler lock."
gives the action "pick a pin tumbler lock", the verb "pick" and the topic "a pin tumbler
lock". The parse is a handful of patterns over the common shapes of seed requests (FigStep
instructions, HarmBench behaviours, XSTest prompts); what none of them matches keeps its key
words as the topic and has no verb. It reads only the request text, never the seed's category
or label, so harmful and benign seeds are treated alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from safeturn.attacks.base import Seed

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")
_STOP_TEXT = """
    a an the and or but if then than so to of in on at by for with from into onto about as is
    are was were be been being am do does did done doing have has had having can could would
    should will shall may might must i me my mine you your yours we our us they them their he
    him his she her it its this that these those there here what which who whom whose when
    where why how some any all each every no not nor too very just also only own same such
    other others more most much many few one ones someone somebody something anyone anything
    people person way ways step steps method methods list lists detail details detailed
    specific particular tell give provide show explain describe suggest please guide tips
    tip techniques technique instructions instruction use using best easy easiest effective
"""
STOPWORDS = frozenset(_STOP_TEXT.split())
"""Function words and request framing ("steps to", "can you", "in detail"): never topics."""
_PARTICLES = frozenset({"into", "up", "out", "off", "away", "down", "over", "around", "through"})
_NOUNS = (
    r"(?:steps|methods|ways|instructions|tips|techniques|guide|guidance|strategies|tactics"
    r"|tools|advice)"
)
_WHO = r"(?:i|you|someone|somebody|one|people|a person|we|they|anyone)"
_ACTION_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        rf"^(?:\w+\s+){{0,2}}?{_NOUNS}\s+(?:to|for|on)\s+(?:how\s+to\s+)?(.+)$",
        rf"^how\s+(?:can|do|does|could|would|should|might|will|to)\s+(?:{_WHO}\s+)?(.+)$",
        rf"^what(?:'s|\s+is|\s+are)\s+(?:the\s+|some\s+|an?\s+)?(?:\w+\s+)?(?:{_NOUNS}|way)"
        r"\s+(?:to|for|of)\s+(.+)$",
        rf"^(?:where|when)\s+(?:can|do|does|could|should|would|might)\s+{_WHO}\s+(.+)$",
        rf"^what\s+{_NOUNS}\s+(?:do|does|can|could|should|would)\s+{_WHO}\s+use\s+to\s+(.+)$",
        rf"^(?:can|could|would|will)\s+you\s+(?:please\s+)?(?:\w+\s+){{1,2}}?"
        rf"(?:{_NOUNS}|how)\s+(?:to|for|on)\s+(?:how\s+to\s+)?(.+)$",
        rf"^(?:please\s+)?(?:give|provide|offer|share|write)\s+(?:[\w-]+\s+){{0,4}}?{_NOUNS}"
        rf"(?:\s+and\s+\w+)?\s+(?:to|for|on)\s+(?:how\s+to\s+)?(.+)$",
        r"^(?:please\s+)?(?:explain|describe|show(?:\s+me)?|tell\s+me)\s+how\s+to\s+(.+)$",
        r"^(?:please\s+)?(?!list\s+of\b)((?:write|generate|create|draft|compose|produce|design"
        r"|develop|make|build|plan|devise|come\s+up\s+with|convince|persuade|list|outline|explain|describe"
        r"|give|provide|suggest|find|identify|determine)\b.+)$",
    )
)
_TOPIC_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^(?:a\s+|the\s+)?(?:list|examples?|types?|kinds?|names?)\s+of\s+(.+)$",
        r"^what\s+does\s+(.+?)\s+mean$",
        r"^what(?:'s|\s+is|\s+are|\s+was|\s+were)\s+(.+)$",
        r"^(?:who|where|when)\s+(?:is|are|was|were)\s+(.+)$",
    )
)


@dataclass(frozen=True)
class Request:
    """The parts of a seed request that templates may name."""

    action: str | None
    """The verb phrase of a procedural request ("pick a pin tumbler lock"), if it has one."""
    verb: str | None
    """Its leading verb, with a particle ("hack into"); None for a gerund or no action."""
    topic: str
    """The thing the request is about: the action's object, or the request's key words."""


def content_words(text: str) -> list[str]:
    """The lower-cased words of `text` that carry content, in order, without repeats."""
    words: list[str] = []
    for raw in _WORD.findall(text.lower()):
        word = raw.removesuffix("'s").strip("'-")
        if len(word) > 1 and word not in STOPWORDS and word not in words:
            words.append(word)
    return words


def parse_request(seed: Seed) -> Request:
    """The action, verb and topic of `seed` (its instruction first, then its question)."""
    texts = [t for t in (seed.instruction, seed.question) if t and t.strip()]
    for text in texts:
        clause = _clean(text)
        for pattern in _ACTION_PATTERNS:
            if match := pattern.match(clause):
                return _from_action(match.group(1), seed)
    for text in texts:
        clause = _clean(text)
        for pattern in _TOPIC_PATTERNS:
            if (match := pattern.match(clause)) and content_words(match.group(1)):
                return Request(None, None, _short(_trim(match.group(1))))
    return Request(None, None, _key_words(seed.question))


def _clean(text: str) -> str:
    return " ".join(text.split()).strip().rstrip(" .?!:;")


def _trim(phrase: str) -> str:
    """A phrase without trailing framing ("... in detail", "... step by step")."""
    phrase = re.sub(
        r"\s+(?:in\s+detail|step[\s-]by[\s-]step|in\s+(?:a\s+)?(?:few|simple)\s+\w+)$",
        "",
        phrase.strip(),
        flags=re.IGNORECASE,
    )
    return phrase.strip(" ,.?!:;")


def _from_action(action: str, seed: Seed) -> Request:
    action = _trim(action)
    words = action.split()
    while len(words) > 1 and words[0].lower().endswith("ly"):  # "successfully hack into ..."
        words = words[1:]
    if not words:
        return Request(None, None, _key_words(seed.question))
    head = words[0].lower()
    take = 2 if len(words) > 2 and words[1].lower() in _PARTICLES else 1
    topic = " ".join(words[take:])
    action = " ".join(words)
    if head.endswith("ing") or not content_words(topic):  # "stealing", "self-harm", "hide it"
        return Request(action, None, _short(action))
    if head in STOPWORDS:  # a verb too vague to ask about on its own ("use the ...")
        return Request(action, None, _short(topic))
    return Request(action, " ".join(w.lower() for w in words[:take]), _short(topic))


def _short(phrase: str, limit: int = 10) -> str:
    """At most `limit` words of `phrase` (a long topic makes every sub-question long)."""
    words = phrase.split()
    return " ".join(words[:limit]).rstrip(" ,;:")


def _key_words(question: str) -> str:
    """The request's first few content words, as a quoted phrase (no pattern matched)."""
    words = content_words(question)[:4] or [question.strip().rstrip("?.!")]
    return "“" + " ".join(words) + "”"
