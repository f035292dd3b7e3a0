"""Moderator specs on the registry, and the strategy vocabulary read from the attack registry."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeturn.attacks import base as attacks_base
from safeturn.attacks.base import ATTACKS, AttackBuilder, BuildContext, Seed, attack
from safeturn.errors import ModelSpecError
from safeturn.guard.base import STRATEGY_NAMES, strategy_names
from safeturn.guard.dataset import training_strategies
from safeturn.guard.model import DEFAULT_MODEL_PATH, ModeratorModel
from safeturn.guard.spec import MODERATORS, check_moderator_spec, parse_moderator_spec
from safeturn.schema import Dialogue, Message, Sample

from ._moderator_stubs import constant_model, stub_moderator


@pytest.mark.parametrize(
    ("spec", "path", "llm", "mode"),
    [
        ("embedded", DEFAULT_MODEL_PATH, None, "prompt"),
        (" embedded ", DEFAULT_MODEL_PATH, None, "prompt"),
        ("runs/guard/m.npz", Path("runs/guard/m.npz"), None, "prompt"),
        ("file:runs/guard/m.npz", Path("runs/guard/m.npz"), None, "prompt"),
        ("~/m.npz", Path("~/m.npz").expanduser(), None, "prompt"),
        (
            "embedded+llm=openai:http://h:8000/v1#org/m+x=1",
            DEFAULT_MODEL_PATH,
            "openai:http://h:8000/v1#org/m+x=1",
            "prompt",
        ),
        (
            "/m/guard.npz+llama-guard=scripted:refuse",
            Path("/m/guard.npz"),
            "scripted:refuse",
            "llama-guard",
        ),
    ],
)
def test_every_moderator_spec_written_before_the_registry_still_parses(
    spec: str, path: Path, llm: str | None, mode: str
) -> None:
    parsed = parse_moderator_spec(spec)
    assert (parsed.model_path, parsed.llm_spec, parsed.llm_mode) == (path, llm, mode)


def test_the_registry_lists_the_embedded_and_file_moderators() -> None:
    assert MODERATORS.names()[:2] == ["embedded", "file"]
    assert MODERATORS.get("file").argument == "model .npz path"
    with pytest.raises(ModelSpecError, match="takes no argument"):
        parse_moderator_spec("embedded:extra")
    with pytest.raises(ModelSpecError, match="no model spec after"):
        check_moderator_spec("embedded+llm=")


def test_the_shipped_model_names_only_registered_strategies() -> None:
    shipped = ModeratorModel.load(DEFAULT_MODEL_PATH).strategies
    assert set(shipped) == set(strategy_names()) == set(STRATEGY_NAMES)
    assert strategy_names()[-1] == "none"
    text, image = training_strategies()
    assert text == ("escalation", "fake-compliance")
    assert set(image) == {"typography", "image-grounding", "image-description", "decomposition"}


@pytest.fixture
def new_strategy() -> Iterator[str]:
    """A strategy registered the way a new file would register it; removed afterwards."""
    ATTACKS.names()

    class Whisper:
        async def __call__(self, seed: Seed, turns: int, ctx: BuildContext) -> Sample:
            users = [Message.user(f"psst {i}: {seed.question}") for i in range(turns)]
            return Sample(
                id=f"{seed.id}-whisper", source=seed.source, dialogue=Dialogue(messages=users)
            )

    @attack("whisper", goal="ask quietly", modality_in={"text"})
    def whisper() -> AttackBuilder:
        return Whisper()

    yield "whisper"
    ATTACKS._entries.pop("whisper", None)
    attacks_base._DEFAULTS.pop("whisper", None)


def test_a_new_strategy_file_joins_the_vocabulary_and_the_training_pool(
    new_strategy: str,
) -> None:
    assert new_strategy in strategy_names()
    assert new_strategy in training_strategies()[0]


def test_the_moderator_reports_the_strategies_its_model_was_trained_on() -> None:
    model = constant_model(4.0, strategy="escalation")
    labels = tuple("my-own" if s == "escalation" else s for s in model.strategies)
    moderator = stub_moderator(dataclasses.replace(model, strategies=labels))
    dialogue = Dialogue(messages=[Message.user("one"), Message.user("two")])
    result = asyncio.run(moderator.screen(dialogue))
    assert result.flagged and result.strategy == "my-own"
