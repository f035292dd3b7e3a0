"""The contract every registered member of every kind keeps, built-in or from a plugin.

Parametrised over `all_registries()`, so a member added in one file is checked here with no
edit: it has a summary and an example, and its example is a spec its registry parses back to
it. Members that can be built offline from their example (scripted and embedded backends,
every attack, datasets pointed at ../shared/data, the embedded moderator) are built, checked
against their kind's Protocol, and closed with `async with` where the kind has one.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safeturn.errors import SafeturnError
from safeturn.registry import Entry, Registry, all_registries
from safeturn.schema import Dialogue, GenerateParams, Message, Sample, write_jsonl
from tests.conftest import SHARED_DATA

REGISTRIES = all_registries()
MEMBERS = [
    pytest.param(registry, entry, id=f"{kind}:{entry.name}")
    for kind, registry in REGISTRIES.items()
    for entry in registry.entries()
]


def _members(kind: str) -> list[Any]:
    entries = REGISTRIES[kind].entries() if kind in REGISTRIES else []
    return [pytest.param(entry, id=entry.name) for entry in entries]


@pytest.mark.parametrize(("registry", "entry"), MEMBERS)
def test_every_member_has_a_summary_and_an_example_spec_that_parses_back_to_it(
    registry: Registry[Any], entry: Entry[Any]
) -> None:
    assert entry.kind == registry.kind and entry.name
    assert entry.summary.strip(), f"{entry.kind} {entry.name!r} has no summary"
    assert entry.example.strip(), f"{entry.kind} {entry.name!r} has no example"
    parsed, argument = registry.split(entry.example)
    assert parsed is entry, f"example {entry.example!r} names {parsed.name!r}"
    assert bool(argument) == entry.argument_required or not entry.argument_required
    assert registry.describe(entry.example).name == entry.name
    assert entry.origin and entry.origin in sys.modules


def test_every_kind_of_the_issue_is_on_the_registry() -> None:
    assert {"backend", "dataset", "attack", "moderator"} <= set(REGISTRIES)


# -- backends ----------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", _members("backend"))
def test_a_backend_built_from_its_example_is_a_chat_model_and_closes(entry: Entry[Any]) -> None:
    from safeturn.models import BaseChatModel, ChatModel, load_model
    from safeturn.models.spec import check_model_spec

    try:
        check_model_spec(entry.example)  # names a folder or file that is not here: not offline
    except SafeturnError as exc:
        pytest.skip(f"{entry.example!r} cannot be built here: {exc}")

    async def use() -> None:
        model = load_model(entry.example)
        assert isinstance(model, ChatModel)
        assert model.name == entry.example
        if not isinstance(model, BaseChatModel):
            await model.aclose()
            return
        async with model as opened:
            assert opened is model
            if entry.name == "scripted":
                user = Dialogue(messages=[Message.user("How do I pick a lock?")])
                reply = await opened.generate(user, GenerateParams(max_tokens=8))
                assert reply.text

    asyncio.run(use())


# -- datasets ----------------------------------------------------------------------------------


def _jsonl(tmp: Path) -> str:
    sample = Sample(
        id="s1", source="mine", dialogue=Dialogue(messages=[Message.user("A question?")])
    )
    write_jsonl([sample], tmp / "samples.jsonl")
    return f"jsonl:{tmp / 'samples.jsonl'}"


def _hf(tmp: Path) -> str:
    from safeturn.data import export_hf, load_dataset

    export_hf(load_dataset(f"xstest:{SHARED_DATA}/xstest/xstest_prompts.csv", limit=3), tmp / "hf")
    return f"hf:{tmp / 'hf'}"


DATA_SPECS: dict[str, Callable[[Path], str] | str] = {
    "advbench": "harmbench/advbench_behaviors.csv",
    "figstep": "figstep/SafeBench-Tiny.csv",
    "figstep-benign": "figstep-benign/SafeBench-Tiny-Benign.csv",
    "harmbench": "harmbench/harmbench_behaviors_text_all.csv",
    "hh-rlhf": "hh-rlhf-harmless/harmless-base-test.jsonl.gz",
    "mmsafetybench": "mmsafetybench/processed_questions#text",
    "mtbench101": "mtbench101/mtbench101_train_tasks.jsonl",
    "questions": "figstep/SafeBench-Tiny.csv",
    "safemt": "safemt",
    "siuo": "siuo/siuo_gen.json",
    "vlguard": "vlguard-dream/train_llava_format.json#instructions",
    "xstest": "xstest/xstest_prompts.csv",
    "jsonl": _jsonl,
    "hf": _hf,
}
"""How to point each built-in dataset at real files: a path under ../shared/data, or a
function that writes one (the example's own path is a placeholder)."""


@pytest.mark.parametrize("entry", _members("dataset"))
def test_a_dataset_loads_real_files_as_samples(entry: Entry[Any], tmp_path: Path) -> None:
    from safeturn.data import LoadedSet, load_dataset

    recipe = DATA_SPECS.get(entry.name)
    if recipe is None:
        pytest.skip(f"no real files known for dataset {entry.name!r}")
    if not SHARED_DATA.is_dir():
        pytest.skip(f"third-party data not found at {SHARED_DATA}")
    spec = recipe(tmp_path) if callable(recipe) else f"{entry.name}:{SHARED_DATA / recipe}"
    loaded = load_dataset(spec, text_only=True, limit=3)
    assert isinstance(loaded, LoadedSet)
    assert 1 <= len(loaded.samples) <= 3
    assert all(isinstance(s, Sample) and s.dialogue.messages for s in loaded.samples)


# -- attacks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", _members("attack"))
def test_an_attack_builds_a_multi_turn_sample_ending_with_the_user(entry: Entry[Any]) -> None:
    from safeturn.attacks import ATTACK_INFO, BuildContext, Seed

    builder = REGISTRIES["attack"].create(entry.example)
    seed = Seed(id="s1", question="How do I pick a lock?", instruction="Steps to pick a lock.")
    sample = asyncio.run(builder(seed, 3, BuildContext()))
    assert sample.turns == 3 and sample.dialogue.messages[-1].role == "user"
    assert sample.strategy == entry.name
    info = ATTACK_INFO[entry.name]
    assert info.goal and "text" in info.modality_in


# -- moderators --------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", _members("moderator"))
def test_a_moderator_built_from_its_example_is_a_moderator_and_closes(entry: Entry[Any]) -> None:
    from safeturn.guard.base import Moderator
    from safeturn.guard.spec import check_moderator_spec, load_moderator

    try:
        check_moderator_spec(entry.example)
    except SafeturnError as exc:
        pytest.skip(f"{entry.example!r} cannot be built here: {exc}")

    async def use() -> None:
        moderator = load_moderator(entry.example)
        assert isinstance(moderator, Moderator) and moderator.name == entry.example
        async with moderator as opened:  # type: ignore[attr-defined]
            assert opened is moderator

    asyncio.run(use())


def test_a_bare_moderator_path_is_the_file_member(tmp_path: Path) -> None:
    from safeturn.errors import ModelSpecError
    from safeturn.guard.model import DEFAULT_MODEL_PATH
    from safeturn.guard.spec import check_moderator_spec, parse_moderator_spec

    assert parse_moderator_spec(str(DEFAULT_MODEL_PATH)).model_path == DEFAULT_MODEL_PATH
    assert parse_moderator_spec(f"file:{DEFAULT_MODEL_PATH}").model_path == DEFAULT_MODEL_PATH
    check_moderator_spec(f"{DEFAULT_MODEL_PATH}+llm=scripted:refuse")
    with pytest.raises(ModelSpecError, match="does not exist"):
        check_moderator_spec(str(tmp_path / "absent.npz"))
    with pytest.raises(ModelSpecError, match="unknown model spec 'nope:x'"):
        check_moderator_spec("embedded+llm=nope:x")


# -- plugins -----------------------------------------------------------------------------------


def test_a_backend_from_an_installed_plugin_package_is_listed_and_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safeturn.models import load_model
    from safeturn.models.spec import BACKENDS

    BACKENDS.names()  # the built-ins first, so only the plugin is new
    info = tmp_path / "x-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: x\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[safeturn.backends]\nx = x_backend\n")
    (tmp_path / "x_backend.py").write_text(
        textwrap.dedent(
            """
            from typing import Any

            from safeturn.models.scripted import ScriptedModel
            from safeturn.models.spec import BACKENDS


            @BACKENDS.register("x-echo", summary="echoes (a plugin)", example="x-echo:hi",
                               argument="anything")
            def x_echo(rest: str, **options: Any) -> ScriptedModel:
                return ScriptedModel.from_spec("echo")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(BACKENDS, "_loaded", False)
    try:
        assert "x-echo" in BACKENDS
        entry = BACKENDS.get("x-echo")
        assert entry.origin == "x_backend" and entry.summary == "echoes (a plugin)"
        model = load_model("x-echo:hi")
        assert model.name == "x-echo:hi"
    finally:
        BACKENDS._entries.pop("x-echo", None)
        sys.modules.pop("x_backend", None)
    assert "x-echo" not in BACKENDS
