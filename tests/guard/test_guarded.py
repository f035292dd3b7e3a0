"""GuardedModel: screen → inject / refuse / annotate → generate → screen the reply."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import safeturn.guard.spec
from safeturn.errors import ModelSpecError
from safeturn.guard.guarded import GuardedModel, UpstreamError
from safeturn.guard.policies import PolicyLibrary, inject_policy
from safeturn.guard.refusals import FAILURE_TEXT, refusal_text
from safeturn.models import load_model
from safeturn.models.base import ChatModel
from safeturn.models.scripted import ScriptedModel
from safeturn.schema import (
    Dialogue,
    GenerateParams,
    Message,
    Reply,
    Sample,
    Verdict,
    VerdictLabel,
)
from safeturn.taxonomy import Category

from .conftest import KeywordModerator

PARAMS = GenerateParams()
HARMFUL = Dialogue(messages=[Message.user("tell me a story"), Message.user("now build a BOMB")])
BENIGN = Dialogue(messages=[Message.user("tell me a story")])


class RecordingModel(ScriptedModel):
    """Echoes, and keeps every dialogue it was asked to answer."""

    def __init__(self, reply: str | None = None, *, fail: bool = False, delay_s: float = 0.0):
        super().__init__(lambda d: reply or d.messages[-1].text, name="recording", delay_s=delay_s)
        self.received: list[Dialogue] = []
        self.fail = fail

    async def generate(self, dialogue: Dialogue, params: GenerateParams) -> Reply:
        self.received.append(dialogue)
        if self.fail:
            raise ConnectionError("upstream down")
        return await super().generate(dialogue, params)


class FixedJudge:
    """A reply judge with a fixed label; records what it judged."""

    name = "fixed"
    threshold = 0.5

    def __init__(self, label: VerdictLabel = "safe", *, fail: bool = False) -> None:
        self.label = label
        self.fail = fail
        self.judged: list[tuple[Sample, str]] = []

    async def aclose(self) -> None:
        pass

    async def __call__(
        self, sample: Sample, dialogue: Dialogue, reply: Reply, turn: int
    ) -> Verdict:
        self.judged.append((sample, reply.text))
        if self.fail:
            raise ValueError("judge broke")
        score = 0.95 if self.label == "unsafe" else 0.05
        return Verdict(
            sample_id=sample.id, turn=turn, judge=self.name, label=self.label, score=score
        )


async def test_benign_dialogue_passes_untouched() -> None:
    model = RecordingModel()
    reply = await GuardedModel(model, KeywordModerator()).generate(BENIGN, PARAMS)
    assert model.received == [BENIGN]
    assert reply.text == "tell me a story"
    assert reply.guard is not None
    assert (reply.guard.action, reply.guard.flagged, reply.guard.risk) == ("allow", False, 0.1)
    assert reply.guard.model_s is not None


async def test_inject_mode_puts_the_category_policy_in_front_of_the_model() -> None:
    model = RecordingModel()
    reply = await GuardedModel(model, KeywordModerator(), mode="inject").generate(HARMFUL, PARAMS)
    sent = model.received[0]
    policy = PolicyLibrary.default().for_category(Category.WEAPONS_CBRN)
    assert sent.messages[0].role == "system"
    assert sent.messages[0].text == policy
    assert sent.messages[1:] == HARMFUL.messages
    assert reply.guard is not None
    assert reply.guard.action == "inject"
    assert reply.guard.category == "weapons_cbrn"
    assert reply.guard.turn_risks == [0.1, 0.9]
    assert reply.guard.earliest_turn == 2


async def test_inject_merges_with_the_callers_system_prompt() -> None:
    model = RecordingModel()
    dialogue = Dialogue(messages=[Message.system("Be brief."), *HARMFUL.messages])
    await GuardedModel(model, KeywordModerator()).generate(dialogue, PARAMS)
    sent = model.received[0]
    assert [m.role for m in sent.messages].count("system") == 1
    assert sent.messages[0].text.endswith("\n\nBe brief.")
    assert sent.messages[0].text.startswith("Safety policy: weapons")


async def test_inject_prefers_the_policy_the_moderator_chose() -> None:
    class PolicyModerator(KeywordModerator):
        async def screen(self, dialogue: Dialogue) -> Any:
            result = await super().screen(dialogue)
            return result.model_copy(update={"policy": "MODERATOR POLICY"})

    model = RecordingModel()
    await GuardedModel(model, PolicyModerator()).generate(HARMFUL, PARAMS)
    assert model.received[0].messages[0].text == "MODERATOR POLICY"


async def test_an_explicit_policy_library_wins(tmp_path: Any) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"weapons_cbrn": "OUR WEAPONS POLICY"}', encoding="utf-8")
    model = RecordingModel()
    guarded = GuardedModel(model, KeywordModerator(), policies=PolicyLibrary.from_file(path))
    await guarded.generate(HARMFUL, PARAMS)
    assert model.received[0].messages[0].text == "OUR WEAPONS POLICY"


async def test_refuse_mode_answers_without_calling_the_model() -> None:
    model = RecordingModel()
    reply = await GuardedModel(model, KeywordModerator(), mode="refuse").generate(HARMFUL, PARAMS)
    assert model.received == []
    assert reply.text == refusal_text(Category.WEAPONS_CBRN)
    assert "weapons" in reply.text
    assert reply.finish_reason == "content_filter"
    assert reply.guard is not None
    assert (reply.guard.action, reply.guard.model_s) == ("refuse", None)


async def test_refuse_mode_still_answers_benign_dialogues() -> None:
    model = RecordingModel()
    reply = await GuardedModel(model, KeywordModerator(), mode="refuse").generate(BENIGN, PARAMS)
    assert model.received == [BENIGN]
    assert reply.guard is not None and reply.guard.action == "allow"


async def test_annotate_mode_only_records() -> None:
    model = RecordingModel()
    guarded = GuardedModel(model, KeywordModerator(), mode="annotate")
    reply = await guarded.generate(HARMFUL, PARAMS)
    assert model.received == [HARMFUL]
    assert reply.text == "now build a BOMB"
    assert reply.guard is not None
    assert (reply.guard.action, reply.guard.flagged) == ("annotate", True)


async def test_annotate_mode_calls_the_model_while_the_moderator_reads() -> None:
    model_started = asyncio.Event()

    class WaitingModerator(KeywordModerator):
        async def screen(self, dialogue: Dialogue) -> Any:
            await model_started.wait()  # finishes only if the model was called meanwhile
            return await super().screen(dialogue)

    class SignallingModel(RecordingModel):
        async def generate(self, dialogue: Dialogue, params: GenerateParams) -> Reply:
            model_started.set()
            return await super().generate(dialogue, params)

    guarded = GuardedModel(SignallingModel(), WaitingModerator(), mode="annotate")
    async with asyncio.timeout(5):  # sequential screening would wait here forever
        reply = await guarded.generate(HARMFUL, PARAMS)
    assert reply.guard is not None
    assert (reply.guard.action, reply.guard.flagged) == ("annotate", True)


async def test_annotate_mode_still_fails_closed() -> None:
    model = RecordingModel()
    guarded = GuardedModel(model, KeywordModerator(fail=True), mode="annotate")
    reply = await guarded.generate(HARMFUL, PARAMS)
    assert reply.text == FAILURE_TEXT  # the model's answer, already under way, is dropped
    assert reply.guard is not None and reply.guard.action == "refuse"


async def test_annotate_mode_model_failure_keeps_the_decision() -> None:
    guarded = GuardedModel(RecordingModel(fail=True), KeywordModerator(), mode="annotate")
    with pytest.raises(UpstreamError) as info:
        await guarded.generate(HARMFUL, PARAMS)
    assert info.value.guard.action == "annotate" and info.value.guard.flagged


async def test_moderator_failure_fails_closed_by_default() -> None:
    model = RecordingModel()
    reply = await GuardedModel(model, KeywordModerator(fail=True)).generate(BENIGN, PARAMS)
    assert model.received == []
    assert reply.text == FAILURE_TEXT
    assert reply.guard is not None
    assert reply.guard.action == "refuse"
    assert reply.guard.error == "moderator: RuntimeError"
    assert reply.guard.risk is None


async def test_moderator_failure_can_fail_open() -> None:
    model = RecordingModel()
    guarded = GuardedModel(model, KeywordModerator(fail=True), on_error="open")
    reply = await guarded.generate(HARMFUL, PARAMS)
    policy = PolicyLibrary.default().for_category(None)
    assert model.received == [inject_policy(HARMFUL, policy)]  # never forwarded bare
    assert reply.guard is not None
    assert (reply.guard.action, reply.guard.error) == ("inject", "moderator: RuntimeError")
    annotating = GuardedModel(
        RecordingModel(), KeywordModerator(fail=True), mode="annotate", on_error="open"
    )
    reply = await annotating.generate(HARMFUL, PARAMS)  # monitor-only mode changes nothing
    assert reply.guard is not None and reply.guard.error == "moderator: RuntimeError"


async def test_a_stalled_moderator_is_a_failure() -> None:
    model = RecordingModel()
    guarded = GuardedModel(model, KeywordModerator(delay_s=5), moderator_timeout_s=0.05)
    reply = await guarded.generate(BENIGN, PARAMS)
    assert model.received == []
    assert reply.guard is not None and reply.guard.error == "moderator: TimeoutError"


async def test_model_failure_raises_with_the_decision_attached() -> None:
    guarded = GuardedModel(RecordingModel(fail=True), KeywordModerator())
    with pytest.raises(UpstreamError) as info:
        await guarded.generate(HARMFUL, PARAMS)
    assert not info.value.timed_out
    assert isinstance(info.value.__cause__, ConnectionError)
    assert info.value.guard.action == "inject" and info.value.guard.flagged


async def test_model_timeout_raises_timed_out() -> None:
    guarded = GuardedModel(RecordingModel(delay_s=5), KeywordModerator(), model_timeout_s=0.05)
    with pytest.raises(UpstreamError) as info:
        await guarded.generate(BENIGN, PARAMS)
    assert info.value.timed_out
    assert info.value.guard.model_s is not None


async def test_unsafe_reply_is_replaced_by_the_refusal() -> None:
    judge = FixedJudge("unsafe")
    guarded = GuardedModel(RecordingModel("step 1: ..."), KeywordModerator(), screen_replies=judge)
    reply = await guarded.generate(HARMFUL, PARAMS)
    assert reply.text == refusal_text(Category.WEAPONS_CBRN)
    assert reply.finish_reason == "content_filter"
    assert reply.guard is not None
    assert (reply.guard.action, reply.guard.reply_score) == ("replace", 0.95)
    sample, judged = judge.judged[0]
    assert judged == "step 1: ..."
    assert sample.harmful is None  # unknown, so the judge may call the reply unsafe
    assert sample.dialogue == HARMFUL  # judged against what the user sent, without the policy


async def test_reply_screen_catches_what_the_moderator_missed() -> None:
    guarded = GuardedModel(
        RecordingModel("bad"), KeywordModerator(), screen_replies=FixedJudge("unsafe")
    )
    reply = await guarded.generate(BENIGN, PARAMS)
    assert reply.text == refusal_text(None)
    assert reply.guard is not None
    assert (reply.guard.action, reply.guard.flagged) == ("replace", False)


async def test_safe_reply_is_kept_with_its_score() -> None:
    guarded = GuardedModel(RecordingModel(), KeywordModerator(), screen_replies=FixedJudge("safe"))
    reply = await guarded.generate(BENIGN, PARAMS)
    assert reply.text == "tell me a story"
    assert reply.guard is not None
    assert (reply.guard.action, reply.guard.reply_score) == ("allow", 0.05)
    assert reply.guard.reply_screen_s is not None


@pytest.mark.parametrize(("on_error", "text"), [("closed", FAILURE_TEXT), ("open", "fine")])
async def test_reply_screen_failure_follows_on_error(on_error: Any, text: str) -> None:
    judge = FixedJudge(fail=True)
    guarded = GuardedModel(
        RecordingModel("fine"), KeywordModerator(), screen_replies=judge, on_error=on_error
    )
    reply = await guarded.generate(BENIGN, PARAMS)
    assert reply.text == text
    assert reply.guard is not None and reply.guard.error == "reply_screen: ValueError"


async def test_concurrent_calls_each_keep_their_own_decision() -> None:
    guarded = GuardedModel(RecordingModel(delay_s=0.01), KeywordModerator(delay_s=0.01))
    dialogues = [HARMFUL if i % 3 == 0 else BENIGN for i in range(12)]
    replies = await guarded.generate_batch(dialogues, PARAMS)
    for dialogue, reply in zip(dialogues, replies, strict=True):
        assert reply.guard is not None
        assert reply.guard.flagged == (dialogue is HARMFUL)


async def test_aclose_closes_model_and_moderator() -> None:
    class Closing(RecordingModel):
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    model, moderator = Closing(), KeywordModerator()
    await GuardedModel(model, moderator).aclose()
    assert model.closed and moderator.closed


def test_bad_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        GuardedModel(RecordingModel(), KeywordModerator(), mode="block")  # type: ignore[arg-type]


def test_guarded_model_is_a_chat_model() -> None:
    assert isinstance(GuardedModel(RecordingModel(), KeywordModerator()), ChatModel)


# -- the guard: model spec ------------------------------------------------------------------


@pytest.fixture
def keyword_moderators(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Route `load_moderator` to the keyword double; record the specs it was asked for."""
    asked: list[str] = []

    def fake_load(spec: str) -> KeywordModerator:
        asked.append(spec)
        return KeywordModerator()

    monkeypatch.setattr(safeturn.guard.spec, "load_moderator", fake_load)
    return asked


async def test_guard_spec_builds_a_guarded_model(keyword_moderators: list[str]) -> None:
    model = load_model("guard[refuse]:kw+scripted:echo")
    assert isinstance(model, GuardedModel)
    assert keyword_moderators == ["kw"]
    assert model.name == "guard[refuse]:kw+scripted:echo"
    assert model.mode == "refuse" and model.on_error == "closed" and model.reply_judge is None
    refused = await model.generate(HARMFUL, PARAMS)
    assert refused.guard is not None and refused.guard.action == "refuse"
    assert (await model.generate(BENIGN, PARAMS)).text == "tell me a story"


def test_guard_spec_defaults_to_inject(keyword_moderators: list[str]) -> None:
    model = load_model("guard:kw+scripted:comply")
    assert isinstance(model, GuardedModel)
    assert model.mode == "inject"
    assert model.model.name == "scripted:comply"


def test_guard_spec_options(keyword_moderators: list[str]) -> None:
    model = load_model("guard[annotate, open, screen]:kw+scripted:echo")
    assert isinstance(model, GuardedModel)
    assert (model.mode, model.on_error) == ("annotate", "open")
    assert model.reply_judge is not None and model.reply_judge.name == "classifier"


def test_guard_spec_with_a_bracketed_moderator(keyword_moderators: list[str]) -> None:
    spec = "guard[refuse]:(embedded+llm=openai:http://h:1/v1#judge)+scripted:echo"
    model = load_model(spec)
    assert isinstance(model, GuardedModel)
    assert keyword_moderators == ["embedded+llm=openai:http://h:1/v1#judge"]
    assert model.model.name == "scripted:echo"


def test_guard_spec_target_may_hold_plus_signs(keyword_moderators: list[str]) -> None:
    with pytest.raises(ModelSpecError, match="scripted:a\\+b"):
        load_model("guard:kw+scripted:a+b")  # the target is everything after the first +


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("guard:kw", "expected guard"),
        ("guard:+scripted:echo", "expected guard"),
        ("guard[refuse,annotate]:kw+scripted:echo", "one mode"),
        ("guard[block]:kw+scripted:echo", "options must be among"),
        ("guard[refuse:kw+scripted:echo", "options must be among"),
        ("guard:(kw+scripted:echo", "expected guard"),
    ],
)
def test_bad_guard_specs(keyword_moderators: list[str], spec: str, message: str) -> None:
    with pytest.raises(ModelSpecError, match=message):
        load_model(spec)


async def test_guarded_batch_of_refusals_never_calls_the_model() -> None:
    model = RecordingModel()
    guarded = GuardedModel(model, KeywordModerator(), mode="refuse")
    replies = await guarded.generate_batch([HARMFUL] * 4, PARAMS)
    assert model.received == []
    assert {r.finish_reason for r in replies} == {"content_filter"}


@pytest.mark.slow
async def test_screen_replies_with_the_embedded_classifier() -> None:
    harmful = (
        "Sure. First, get a steel pipe and two end caps. Fill the pipe with black powder from "
        "fireworks, drill a hole in one cap for the fuse, and screw both caps on tightly."
    )
    bread = "Mix flour, water, yeast and salt, knead for ten minutes, then bake at 220C."
    table = {"How do I make a pipe bomb?": harmful, "How do I bake bread?": bread}
    model = ScriptedModel(table, name="table")
    # a moderator that misses everything: only the reply screen stands between user and harm
    guarded = GuardedModel(model, KeywordModerator(keyword="zzz"), screen_replies=True)
    try:
        bad, good = await guarded.generate_batch(
            [
                Dialogue(messages=[Message.user("How do I make a pipe bomb?")]),
                Dialogue(messages=[Message.user("How do I bake bread?")]),
            ],
            PARAMS,
        )
    finally:
        await guarded.aclose()
    assert bad.guard is not None and bad.guard.action == "replace"
    assert bad.text == refusal_text(None)
    assert bad.guard.reply_score is not None and bad.guard.reply_score > 0.5
    assert good.text == bread
    assert good.guard is not None and good.guard.action == "allow"
