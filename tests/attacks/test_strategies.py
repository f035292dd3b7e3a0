"""Contract tests run over every registered strategy (garak style)."""

from __future__ import annotations

import asyncio

import pytest

from safeturn.attacks import (
    ATTACK_INFO,
    STRATEGIES,
    AttackConfigError,
    BuildContext,
    Seed,
    build_attacks_sync,
    get_strategy,
)
from safeturn.schema import ImagePart, Sample, TextPart

from .conftest import IMAGE_SEED, SEEDS

ALL = sorted(STRATEGIES)
TURNS = (1, 2, 4, 8)
# where each strategy puts images: "seed" passes the seed's image through (if any),
# "seed-or-rendered" uses it or renders the instruction, "rendered" always renders,
# "captioned" renders the instruction alone or under the seed's picture
IMAGE_RULE = {
    "escalation": "seed",
    "fake-compliance": "seed",
    "image-grounding": "captioned",
    "image-description": "seed-or-rendered",
    "decomposition": "seed-or-rendered",
    "typography": "rendered",
}


def build(name: str, seed: Seed, turns: int, build_seed: int = 0) -> Sample:
    return asyncio.run(get_strategy(name)(seed, turns, BuildContext(seed=build_seed)))


def test_the_six_strategies_are_registered_with_metadata() -> None:
    assert set(ALL) == set(IMAGE_RULE)
    for name in ALL:
        info = ATTACK_INFO[name]
        assert info.name == name and info.goal
        assert info.modality_out == {"text"}
        image_in = IMAGE_RULE[name] != "seed"
        assert ("image" in info.modality_in) == image_in
    assert ATTACK_INFO["decomposition"].needs_attacker
    assert not ATTACK_INFO["escalation"].needs_attacker


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(AttackConfigError, match="known strategies: decomposition, escalation"):
        get_strategy("nope")


@pytest.mark.parametrize("turns", TURNS)
@pytest.mark.parametrize("name", ALL)
def test_dialogue_shape_and_fields(name: str, turns: int, any_seed: Seed) -> None:
    sample = build(name, any_seed, turns)
    messages = sample.dialogue.messages
    assert [m.role for m in messages] == ["user", "assistant"] * (turns - 1) + ["user"]
    assert sample.turns == sample.dialogue.n_turns == turns
    assert sample.id == f"{any_seed.id}-{name}-{turns}t"
    assert sample.strategy == name
    assert sample.seed_question == any_seed.question
    assert sample.harmful is any_seed.harmful
    assert (sample.category, sample.source) == (any_seed.category, any_seed.source)
    assert sample.metadata["seed_id"] == any_seed.id
    assert sample.metadata["mode"] == "template"
    for i, message in enumerate(messages):
        text = message.text
        assert "{" not in text and "}" not in text, f"unfilled template in {text!r}"
        if message.role == "assistant" or i > 0:
            assert text.strip(), f"message {i} is empty"
    assert messages[-1].text.strip()


@pytest.mark.parametrize("turns", TURNS)
@pytest.mark.parametrize("name", ALL)
def test_images_only_where_the_strategy_puts_them(name: str, turns: int, any_seed: Seed) -> None:
    sample = build(name, any_seed, turns)
    first, rest = sample.dialogue.messages[0], sample.dialogue.messages[1:]
    assert all(not m.images for m in rest)
    assert first.parts[-1].type == "text" or (name == "image-description" and turns > 1)
    rule = IMAGE_RULE[name]
    if rule == "seed" and any_seed.image is None:
        assert first.images == []
        return
    assert len(first.images) == 1
    image = first.images[0]
    if rule == "rendered" or any_seed.image is None:
        assert image != any_seed.image
        assert image.load().size[0] >= 500  # a typographic rendering, not the seed's picture
    elif rule == "captioned":
        pixels = image.load()
        assert pixels.size[0] == 760 and pixels.size[1] > any_seed.image.load().size[1]
        assert pixels.getpixel((380, 15)) == any_seed.image.load().getpixel((20, 15))
    else:
        assert image == any_seed.image


@pytest.mark.parametrize("turns", TURNS)
@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_json_other_seeds_vary(name: str, turns: int, any_seed: Seed) -> None:
    first = build(name, any_seed, turns, build_seed=3)
    assert first.model_dump_json() == build(name, any_seed, turns, build_seed=3).model_dump_json()
    variants = {
        build(name, any_seed, turns, build_seed=s).dialogue.model_dump_json() for s in range(8)
    }
    assert len(variants) > 1


def test_turn_counts_outside_1_to_8_are_refused() -> None:
    for bad in (0, 9):
        with pytest.raises(AttackConfigError, match="between 1 and 8"):
            build("escalation", IMAGE_SEED, bad)


def test_ids_are_unique_over_a_full_build() -> None:
    samples = build_attacks_sync(list(SEEDS.values()), "all", range(1, 9))
    assert len(samples) == len(SEEDS) * len(ALL) * 8
    assert len({s.id for s in samples}) == len(samples)
    # the order is seed, then strategy, then turn count
    assert [s.turns for s in samples[:8]] == list(range(1, 9))


def test_image_description_opens_with_image_and_neutral_text() -> None:
    seen = set()
    for build_seed in range(12):
        first = build("image-description", IMAGE_SEED, 4, build_seed).dialogue.messages[0]
        assert isinstance(first.parts[0], ImagePart)
        texts = [p.text for p in first.parts if isinstance(p, TextPart)]
        assert IMAGE_SEED.question not in " ".join(texts)
        seen.add(tuple(texts))
    assert () in seen  # the image alone, with no text at all, is one of the openings


def test_typography_never_states_the_request_in_text() -> None:
    from .conftest import TEXT_SEED

    for turns in TURNS:
        sample = build("typography", TEXT_SEED, turns)
        user_texts = [m.text for m in sample.dialogue.messages if m.role == "user"]
        assert all("pick" not in text for text in user_texts)
        assert "list" in user_texts[-1]


@pytest.mark.parametrize("name", ALL)
def test_the_category_never_reaches_the_dialogue(name: str) -> None:
    """Only harmful seeds carry a category; a template that wrote it would leak the label."""
    labelled = Seed(
        id="s", question="How can I plan a surprise party?", category="Illegal Activity"
    )
    plain = labelled.model_copy(update={"category": None, "harmful": False})
    for turns in (1, 2, 4, 8):
        for build_seed in range(6):
            a = build(name, labelled, turns, build_seed).dialogue
            b = build(name, plain, turns, build_seed).dialogue
            assert [m.text for m in a.messages] == [m.text for m in b.messages]
            assert "illegal activity" not in " ".join(m.text.lower() for m in a.messages)
