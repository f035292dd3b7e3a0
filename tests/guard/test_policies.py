"""Policy library, policy injection and refusal texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safeturn.guard.policies import PolicyError, PolicyLibrary, inject_policy
from safeturn.guard.refusals import CONCERNS, FAILURE_TEXT, refusal_text
from safeturn.judges.refusal import detect_refusal
from safeturn.schema import Dialogue, ImagePart, Message, TextPart
from safeturn.taxonomy import Category
from tests.conftest import png_bytes


def test_every_category_has_its_own_policy() -> None:
    library = PolicyLibrary.default()
    texts = {c: library.for_category(c) for c in Category}
    assert len(set(texts.values())) == len(Category)
    assert all(len(t) > 80 for t in texts.values())
    assert library.for_category(None) == library.as_dict()["default"]
    assert library.for_category(None) not in texts.values()


@pytest.mark.parametrize(
    "category", [Category.LEGAL_ADVICE, Category.FINANCIAL_ADVICE, Category.HEALTH_ADVICE]
)
def test_advice_policies_refer_to_a_professional(category: Category) -> None:
    text = PolicyLibrary.default().for_category(category).lower()
    assert any(word in text for word in ("lawyer", "adviser", "doctor"))


def test_from_json_overrides_one_category_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "policies.json"
    path.write_text(json.dumps({"self_harm": "Our own self-harm policy."}), encoding="utf-8")
    library = PolicyLibrary.from_file(path)
    default = PolicyLibrary.default()
    assert library.for_category(Category.SELF_HARM) == "Our own self-harm policy."
    assert library.for_category(Category.VIOLENCE) == default.for_category(Category.VIOLENCE)
    assert library.for_category(None) == default.for_category(None)


def test_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "policies.toml"
    path.write_text('default = "Be careful."\nprivacy = "No doxxing."\n', encoding="utf-8")
    library = PolicyLibrary.from_file(path)
    assert library.for_category(None) == "Be careful."
    assert library.for_category(Category.PRIVACY) == "No doxxing."


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"self-harm": "x"}', ".json", "unknown category 'self-harm'"),
        ('{"privacy": ""}', ".json", "must be non-empty text"),
        ('{"privacy": 3}', ".json", "must be non-empty text"),
        ("[1, 2]", ".json", "expected a table"),
        ("{not json", ".json", "not valid JSON"),
        ("privacy = ", ".toml", "not valid TOML"),
        ("privacy: x", ".yaml", "must end in .json or .toml"),
    ],
)
def test_bad_policy_files_are_clear_errors(
    tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    path = tmp_path / f"policies{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PolicyError, match=message) as info:
        PolicyLibrary.from_file(path)
    assert str(path) in str(info.value)


def test_missing_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        PolicyLibrary.from_file(tmp_path / "absent.json")


def test_inject_adds_a_leading_system_message() -> None:
    dialogue = Dialogue(
        messages=[Message.user("hi"), Message.assistant("hello"), Message.user("x")]
    )
    injected = inject_policy(dialogue, "POLICY")
    assert [m.role for m in injected.messages] == ["system", "user", "assistant", "user"]
    assert injected.messages[0].text == "POLICY"
    assert dialogue.messages[0].role == "user"  # the original is untouched


def test_inject_merges_into_an_existing_system_message() -> None:
    dialogue = Dialogue(messages=[Message.system("You are a pirate."), Message.user("hi")])
    injected = inject_policy(dialogue, "POLICY")
    assert [m.role for m in injected.messages] == ["system", "user"]
    assert injected.messages[0].text == "POLICY\n\nYou are a pirate."


def test_inject_keeps_images_of_a_system_message() -> None:
    image = ImagePart(data=png_bytes())
    dialogue = Dialogue(
        messages=[Message(role="system", parts=[image]), Message.user("what is this?")]
    )
    injected = inject_policy(dialogue, "POLICY")
    parts = injected.messages[0].parts
    assert isinstance(parts[0], TextPart) and parts[0].text == "POLICY"
    assert parts[1] == image


@pytest.mark.parametrize("category", [None, *Category])
def test_refusals_read_as_refusals_and_name_their_concern(category: Category | None) -> None:
    text = refusal_text(category)
    assert detect_refusal(text)[0]
    if category is not None:
        assert CONCERNS[category].concern in text
        assert CONCERNS[category].offer in text


def test_failure_text_reads_as_a_refusal() -> None:
    assert detect_refusal(FAILURE_TEXT)[0]
