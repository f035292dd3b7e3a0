"""The shared pieces the judges are built from: the prompted-judge template and its helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeturn.data.labelled import answerable
from safeturn.errors import ModelSpecError, SchemaError
from safeturn.judges.base import benign_guarded_verdict
from safeturn.judges.llm import (
    JudgeAnswer,
    PromptedReplyJudge,
    load_prompt,
    noted,
    number_in,
)
from safeturn.judges.specs import JUDGES, MODEL_SPEC, checked_create, parse_judge_spec
from safeturn.judges.turn_scores import TurnScores
from safeturn.models.scripted import ScriptedModel
from safeturn.registry import Registry
from safeturn.schema import Dialogue, Message, Reply, Sample, Verdict, VerdictLabel
from tests.judges._recorder import Recorder


class ShoutJudge(PromptedReplyJudge[bool]):
    """The smallest prompted judge: unsafe when the model answers LOUD."""

    prefix = "shout"

    def prompt(self, sample: Sample, dialogue: Dialogue, reply_text: str) -> str:
        return f"Is this loud? {reply_text}"

    def parse(self, text: str) -> bool:
        if text not in ("LOUD", "quiet"):
            raise ValueError(f"expected LOUD or quiet, got {text!r}")
        return text == "LOUD"

    def answer_verdict(
        self, sample: Sample, turn: int, reply: Reply, answer: JudgeAnswer[bool]
    ) -> Verdict:
        label: VerdictLabel = "unsafe" if answer.value else "safe"
        return self.verdict(sample, turn, reply, label, f"attempts={answer.attempts}")


def _sample(harmful: bool | None = True) -> Sample:
    messages = [Message.user("one"), Message.assistant("ok"), Message.user("two")]
    return Sample(id="s", source="t", harmful=harmful, dialogue=Dialogue(messages=messages))


async def test_the_template_asks_with_our_prompt_and_cuts_the_dialogue_at_the_turn() -> None:
    recorder = Recorder("LOUD")
    judge = ShoutJudge(ScriptedModel(recorder, name="m"))
    sample = _sample()
    verdict = await judge(sample, sample.dialogue, Reply(text="HEY", model="x"), 1)
    assert (verdict.judge, verdict.label, verdict.rationale) == ("shout:m", "unsafe", "attempts=1")
    (request,) = recorder.requests
    assert request.messages[0].text == load_prompt("judge_system")
    assert request.messages[-1].text == "Is this loud? HEY"


async def test_the_template_retries_then_returns_an_invalid_verdict() -> None:
    recorder = Recorder("shrug")
    judge = ShoutJudge(ScriptedModel(recorder, name="m"), retries=1)
    sample = _sample()
    verdict = await judge(sample, sample.dialogue, Reply(text="hey", model="x"), 2)
    assert verdict.label == "invalid" and "expected LOUD or quiet" in verdict.rationale
    assert len(recorder.requests) == 2


async def test_a_second_attempt_is_noted() -> None:
    judge = ShoutJudge(ScriptedModel(Recorder("shrug", "quiet"), name="m"))
    sample = _sample()
    verdict = await judge(sample, sample.dialogue, Reply(text="hey", model="x"), 2)
    assert (verdict.label, verdict.rationale) == ("safe", "attempts=2")


def test_noted_marks_the_reason_only_after_the_first_attempt() -> None:
    scores = TurnScores(0.5, 1.0, "fine")
    assert noted(JudgeAnswer(scores, "raw", 1)) is scores
    assert noted(JudgeAnswer(scores, "raw", 3)).reason == "fine (judge answered on attempt 3)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, 7.0),
        (" 2.5 ", 2.5),
        ("x", '"score" must be a number from 1 to 10'),
        (True, "must be a number"),
        (10.5, '"score" must be from 1 to 10; got 10.5'),
        (float("nan"), "must be from 1 to 10"),
    ],
)
def test_number_in(value: object, expected: float | str) -> None:
    if isinstance(expected, float):
        assert number_in(value, "score", 1.0, 10.0) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            number_in(value, "score", 1.0, 10.0)


@pytest.mark.parametrize(
    ("harmful", "label"), [(True, "unsafe"), (None, "unsafe"), (False, "safe")]
)
def test_a_known_benign_request_is_never_unsafe(harmful: bool | None, label: str) -> None:
    verdict = benign_guarded_verdict(
        "j", _sample(harmful), 2, unsafe_if_harmful=True, refused=False, score=0.9, rationale="r"
    )
    assert (verdict.label, verdict.judge, verdict.turn, verdict.score) == (label, "j", 2, 0.9)


def test_every_model_judge_is_named_by_its_spec() -> None:
    for entry in JUDGES.entries():
        if entry.argument == MODEL_SPEC:
            spec = f"{entry.name}:scripted:refuse"
            assert parse_judge_spec(spec).name == spec


def test_checked_create_names_what_a_factory_built_instead() -> None:
    registry: Registry[object] = Registry("widget", builtins=(), error=ModelSpecError)
    registry.register("odd", summary="builds a string")(lambda: "not a widget")
    with pytest.raises(ModelSpecError, match="widget 'odd' built a str, not a int"):
        checked_create(registry, int, "odd")


def test_answerable_words_each_error_as_asked(tmp_path: Path) -> None:
    ends_on_reply = Sample(
        id="s",
        source="t",
        dialogue=Dialogue(messages=[Message.user("hi"), Message.assistant("hello")]),
    )
    with pytest.raises(SchemaError, match=r"^last is assistant$"):
        answerable(ends_on_reply, tmp_path, no_user="none", last_role="last is {role}")
    only_system = Sample(
        id="s", source="t", dialogue=Dialogue(messages=[Message.system("be nice")])
    )
    with pytest.raises(SchemaError, match=r"^none$"):
        answerable(only_system, tmp_path, no_user="none", last_role="last is {role}")
    assert answerable(_sample(), tmp_path, no_user="none", last_role="x") == _sample()
