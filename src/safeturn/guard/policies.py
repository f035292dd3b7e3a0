"""Safety policies: one short system-prompt text per risk category, and how to inject one.

A flagged dialogue gets the policy for its category placed in front of the model. A specific
policy works better than a generic "be safe" line: it says what to refuse *and* what to still
help with, so the model neither complies nor over-refuses. The texts ship as package data
(`guard/data/policies.json`); a deployment can override any of them with its own file.

Examples:
    >>> library = PolicyLibrary.default()
    >>> library.for_category(Category.SELF_HARM).startswith("Safety policy: self-harm")
    True
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Final

from safeturn.errors import PolicyError as PolicyError
from safeturn.schema import Dialogue, Message, TextPart
from safeturn.taxonomy import Category

DEFAULT_KEY: Final = "default"
"""The key of the policy used when no category is known."""


class PolicyLibrary:
    """An immutable map from category (or `default`) to policy text.

    Every category always has a text: a user file that leaves one out falls back to the
    shipped text, so overriding one policy never silently disables the others.
    """

    def __init__(self, texts: Mapping[str, str]) -> None:
        missing = [key for key in (DEFAULT_KEY, *Category) if key not in texts]
        if missing:
            raise PolicyError(f"policy library has no text for: {', '.join(missing)}")
        self._texts: Mapping[str, str] = MappingProxyType(dict(texts))

    @classmethod
    def default(cls) -> PolicyLibrary:
        """The policies shipped with safeturn."""
        return cls(_shipped_texts())

    @classmethod
    def from_file(cls, path: Path) -> PolicyLibrary:
        """Load `{category: text}` from a JSON or TOML file; unlisted categories keep ours."""
        overrides = _read_policy_file(path)
        return cls({**_shipped_texts(), **overrides})

    def for_category(self, category: Category | None) -> str:
        """The policy for `category`, or the default policy when it is None."""
        return self._texts[DEFAULT_KEY if category is None else str(category)]

    def as_dict(self) -> dict[str, str]:
        """A plain copy of every text, keyed by category value (and `default`)."""
        return dict(self._texts)


def inject_policy(dialogue: Dialogue, policy: str) -> Dialogue:
    """Return a copy of `dialogue` whose system message starts with `policy`.

    The policy is merged into a leading system message when there is one, because several chat
    templates (Qwen2-VL's among them) reject a second system message or one that is not first.
    """
    messages = list(dialogue.messages)
    if messages and messages[0].role == "system":
        parts = list(messages[0].parts)
        first = next((i for i, p in enumerate(parts) if isinstance(p, TextPart)), None)
        if first is None:
            parts.insert(0, TextPart(text=policy))
        else:
            head = parts[first]
            assert isinstance(head, TextPart)
            parts[first] = TextPart(text=f"{policy}\n\n{head.text}" if head.text else policy)
        messages[0] = Message(role="system", parts=parts)
    else:
        messages.insert(0, Message.system(policy))
    return Dialogue(messages=messages)


def _shipped_texts() -> dict[str, str]:
    raw = resources.files("safeturn.guard").joinpath("data", "policies.json").read_text("utf-8")
    return _validated(json.loads(raw), where="shipped policies.json")


def _read_policy_file(path: Path) -> dict[str, str]:
    try:
        if path.suffix.lower() == ".toml":
            with path.open("rb") as fh:
                data: object = tomllib.load(fh)
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise PolicyError(f"{path}: policy files must end in .json or .toml")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy file ({exc})") from exc
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: not valid {path.suffix.lstrip('.').upper()} ({exc})") from exc
    return _validated(data, where=str(path))


def _validated(data: object, *, where: str) -> dict[str, str]:
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: expected a table of {{category: policy text}}")
    known = {DEFAULT_KEY, *(c.value for c in Category)}
    out: dict[str, str] = {}
    for key, text in data.items():
        if key not in known:
            raise PolicyError(
                f"{where}: unknown category {key!r}; known: {', '.join(sorted(known))}"
            )
        if not isinstance(text, str) or not text.strip():
            raise PolicyError(f"{where}: policy for {key!r} must be non-empty text")
        out[key] = text.strip()
    return out
