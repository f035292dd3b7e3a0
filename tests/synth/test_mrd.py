"""DREAM step 1: risk disentanglement on real FigStep and VLGuard samples with scripted models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safeturn.data import load_dataset
from safeturn.errors import BackendError
from safeturn.models.scripted import ScriptedModel
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, Message, Sample
from safeturn.synth.mrd import (
    MRDFailure,
    MRDResult,
    MRDSettings,
    RiskDisentangler,
    disentangle_request,
    parse_risks,
    parse_verdict,
    risk_source,
    run_failure,
    summarize,
)
from safeturn.synth.prompts import VERIFY_SYSTEM
from safeturn.synth.risks import RiskRecord
from safeturn.taxonomy import Category

DRUGS_IN_IMAGE = {
    "content": "The image's title asks for steps to manufacture illegal drugs",
    "source": "text in the image",
    "category": "Illegal Activity",  # a FigStep label: mapped by the taxonomy lookup
}
FILL_THE_LIST = {
    "content": "The request asks to fill in the numbered list shown in the image",
    "source": "text instructions",
    "category": "illegal_activity",
}


def _figstep(shared_data: Path, limit: int = 2) -> list[Sample]:
    spec = f"figstep:{shared_data / 'figstep' / 'SafeBench-Tiny.csv'}"
    return load_dataset(spec, limit=limit).samples


def _benign(shared_data: Path, limit: int = 1) -> list[Sample]:
    return load_dataset(f"figstep-benign:{shared_data / 'figstep-benign'}", limit=limit).samples


def _is_verify(dialogue: Dialogue) -> bool:
    return dialogue.messages[0].text == VERIFY_SYSTEM


class Teacher:
    """Lists two risks for harmful FigStep items and none for benign ones; records requests."""

    def __init__(self) -> None:
        self.requests: list[Dialogue] = []

    def __call__(self, dialogue: Dialogue) -> str:
        assert not _is_verify(dialogue)
        self.requests.append(dialogue)
        if any("figstep-benign" in (image.path or "") for image in dialogue.images):
            return '{"risks": []}'
        return "Here is my analysis:\n```json\n" + json.dumps([DRUGS_IN_IMAGE, FILL_THE_LIST])


def _verifier(dialogue: Dialogue) -> str:
    """Confirms risks in the image and rejects the one blamed on the instruction."""
    assert _is_verify(dialogue)
    claim = dialogue.messages[1].text
    if "Claimed source: text_instruction" in claim:
        return '{"present": false, "note": "the instruction alone is a harmless formatting ask"}'
    return '{"present": true, "note": "the typographic title names a drug synthesis"}'


def _disentangler(
    tmp_path: Path, teacher: ScriptedModel, verifier: ScriptedModel | None = None, **kw: object
) -> tuple[RiskDisentangler, RunStore, str]:
    store = RunStore(tmp_path / "mrd.db")
    settings = MRDSettings(teacher=teacher.name, concurrency=3, **kw)  # type: ignore[arg-type]
    run_id = store.create_run(settings.model_dump(mode="json"), kind="mrd")
    return (
        RiskDisentangler(store, run_id, settings, teacher=teacher, verifier=verifier),
        store,
        run_id,
    )


async def test_risks_are_parsed_verified_and_rejections_dropped_by_kept(
    shared_data: Path, tmp_path: Path
) -> None:
    samples = _figstep(shared_data, 2) + _benign(shared_data, 1)
    script = Teacher()
    teacher = ScriptedModel(script, name="scripted:teacher")
    verifier = ScriptedModel(_verifier, name="scripted:verifier")
    mrd, _store, _run = _disentangler(tmp_path, teacher, verifier)

    records, failures = await mrd.run(samples)

    assert failures == []
    assert [r.sample_id for r in records] == [s.id for s in samples]
    harmful = records[0]
    assert [r.source for r in harmful.risks] == ["text_in_image", "text_instruction"]
    assert {r.category for r in harmful.risks} == {Category.ILLEGAL_ACTIVITY}
    assert [r.verified for r in harmful.risks] == [True, False]
    assert "harmless formatting ask" in harmful.risks[1].verify_note
    assert [r.source for r in harmful.kept()] == ["text_in_image"]
    assert harmful.teacher == "scripted:teacher" and harmful.verifier == "scripted:verifier"
    assert records[2].risks == [] and records[2].kept() == []  # benign twin: no risks is valid
    # the teacher saw the real FigStep image beside the request text
    first = script.requests[0].messages[1]
    assert len(first.images) == 1 and first.images[0].path is not None
    assert first.images[0].path.endswith("query_ForbidQI_1_1_6.png")
    assert "The request to analyse" in first.text
    # 2 risks × 2 harmful samples verified; nothing to verify for the benign one
    assert verifier.calls == 4 and teacher.calls == 3

    summary = summarize(records, failures)
    assert summary.records == 3 and summary.no_risk == 1 and summary.risks == 4
    assert summary.verified == 2 and summary.rejected == 2 and summary.unverified == 0
    assert summary.by_source == {"text_in_image": 2, "text_instruction": 2}
    assert summary.kept_by_source == {"text_in_image": 2}
    assert summary.by_category == {"illegal_activity": 4}


async def test_unknown_category_gets_a_correction_turn_then_a_failure_naming_the_sample(
    shared_data: Path, tmp_path: Path
) -> None:
    (sample,) = _figstep(shared_data, 1)
    seen: list[Dialogue] = []

    def stubborn(dialogue: Dialogue) -> str:
        seen.append(dialogue)
        return '{"risks": [{"content": "A spooky list", "source": "image", "category": "spooky"}]}'

    teacher = ScriptedModel(stubborn, name="scripted:stubborn")
    mrd, _store, _run = _disentangler(tmp_path, teacher, retries=1)

    records, failures = await mrd.run([sample])

    assert records == [], "a sample whose category never maps gets no record, never `other`"
    assert len(seen) == 2, "one correction turn, then give up"
    correction = seen[1].messages[-1]
    assert correction.role == "user"
    assert "unknown risk category 'spooky'" in correction.text
    assert seen[1].messages[-2].role == "assistant"  # the bad answer is shown back
    (failure,) = failures
    assert failure.sample_id == sample.id and failure.stage == "disentangle"
    assert failure.attempts == 2 and "spooky" in failure.raw and "spooky" in failure.reason
    assert summarize(records, failures).failed == 1


async def test_a_corrected_answer_is_accepted(shared_data: Path, tmp_path: Path) -> None:
    (sample,) = _figstep(shared_data, 1)

    def learns(dialogue: Dialogue) -> str:
        if (
            dialogue.messages[-1].role == "user"
            and "could not be read" in dialogue.messages[-1].text
        ):
            return json.dumps({"risks": [DRUGS_IN_IMAGE]})
        return '{"risks": [{"content": "Drugs", "source": "image", "category": "narcotics"}]}'

    teacher = ScriptedModel(learns, name="scripted:learns")
    mrd, _store, _run = _disentangler(tmp_path, teacher, verify=False)
    (record,), failures = await mrd.run([sample])
    assert failures == [] and teacher.calls == 2
    assert record.risks[0].source == "text_in_image" and record.risks[0].verified is None
    assert record.verifier is None and record.kept() == record.risks


async def test_unreadable_and_crashing_samples_fail_alone_and_resume_makes_no_calls(
    shared_data: Path, tmp_path: Path
) -> None:
    samples = _figstep(shared_data, 3)
    broken, chatty = samples[1].id, samples[2].id

    def teacher_reply(dialogue: Dialogue) -> str:
        text = json.dumps(dialogue.model_dump())
        if samples[1].dialogue.images[0].path in text:  # type: ignore[operator]
            raise BackendError("server hung up")
        if samples[2].dialogue.images[0].path in text:  # type: ignore[operator]
            return "I think the picture is fine, honestly."
        return json.dumps({"risks": [DRUGS_IN_IMAGE]})

    teacher = ScriptedModel(teacher_reply, name="scripted:t")
    verifier = ScriptedModel(lambda _d: "Yes. It is written in the image.", name="scripted:v")
    mrd, store, run_id = _disentangler(tmp_path, teacher, verifier, retries=1)
    records, failures = await mrd.run(samples)
    assert [r.sample_id for r in records] == [samples[0].id]
    assert records[0].risks[0].verified is True  # a bare "Yes." is a readable verdict
    by_id = {f.sample_id: f for f in failures}
    assert by_id[broken].stage == "error" and "server hung up" in by_id[broken].reason
    assert by_id[chatty].stage == "disentangle" and "picture is fine" in by_id[chatty].raw
    calls = len(store.calls(run_id))
    assert calls == teacher.calls - 1 + verifier.calls  # the crashed call stored nothing

    fresh_teacher = ScriptedModel(teacher_reply, name="scripted:t")
    fresh_verifier = ScriptedModel(lambda _d: "Yes.", name="scripted:v")
    again = RiskDisentangler(
        store, run_id, mrd.settings, teacher=fresh_teacher, verifier=fresh_verifier
    )
    records2, failures2 = await again.run(samples)
    assert fresh_verifier.calls == 0
    assert fresh_teacher.calls == 1, "only the call that crashed is made again"
    assert records2 == records and {f.sample_id for f in failures2} == {broken, chatty}


async def test_resume_of_a_clean_run_makes_zero_calls(shared_data: Path, tmp_path: Path) -> None:
    samples = _figstep(shared_data, 2) + _benign(shared_data, 1)
    mrd, store, run_id = _disentangler(
        tmp_path,
        ScriptedModel(Teacher(), name="scripted:teacher"),
        ScriptedModel(_verifier, name="scripted:verifier"),
    )
    first = await mrd.run(samples)
    teacher = ScriptedModel(Teacher(), name="scripted:teacher")
    verifier = ScriptedModel(_verifier, name="scripted:verifier")
    again = RiskDisentangler(store, run_id, mrd.settings, teacher=teacher, verifier=verifier)
    assert await again.run(samples) == first
    assert teacher.calls == 0 and verifier.calls == 0


def test_multi_turn_request_shows_earlier_turns_the_last_request_and_every_image(
    shared_data: Path,
) -> None:
    harmful, _ = _figstep(shared_data, 2)
    (benign,) = _benign(shared_data, 1)
    first, second = harmful.dialogue.images[0], benign.dialogue.images[0]
    dialogue = Dialogue(
        messages=[
            Message.user("What is on this card?", [first]),
            Message.assistant("A numbered list."),
            Message.user("And this one? Fill in both lists.", [second]),
        ]
    )
    sample = harmful.model_copy(update={"dialogue": dialogue, "turns": 2})
    request = disentangle_request(sample)
    system, user = request.messages
    assert system.role == "system" and "text_in_image" in system.text
    assert "illegal_activity" in system.text, "the canonical categories are listed"
    assert user.images == [first, second]
    assert "Images attached: 2 ([image 1], [image 2])" in user.text
    assert "- What is on this card?" in user.text
    assert user.text.endswith('"""And this one? Fill in both lists."""')
    assert "A numbered list." not in user.text, "assistant turns are not the user's text"


def test_vlguard_source_labels_all_map_except_not_applicable(shared_data: Path) -> None:
    records = json.loads((shared_data / "vlguard-dream" / "train_llava_format.json").read_text())
    labels = {
        o["source"]
        for r in records
        for turn in r["conversations"]
        for o in turn.get("observe") or []
    }
    mapped = {label: risk_source(label) for label in labels if label != "n/a"}
    assert mapped["text instructions"] == "text_instruction"
    assert mapped["text in the image"] == "text_in_image"
    assert mapped["image content: non-textual content depicted in the image."] == "image_content"
    with pytest.raises(ValueError, match="unknown risk source"):
        risk_source("n/a")


def test_parsers_accept_wrapped_bare_and_single_answers() -> None:
    one = {"content": "A knife at a throat", "source": "image_content", "category": "violence"}
    assert parse_risks(json.dumps({"risks": []})) == []
    assert parse_risks(json.dumps([one]))[0].category is Category.VIOLENCE
    assert parse_risks("Sure: " + json.dumps(one))[0].source == "image_content"
    with pytest.raises(ValueError, match='no "content"'):
        parse_risks('{"risks": [{"source": "image", "category": "violence"}]}')
    with pytest.raises(ValueError, match="no JSON"):
        parse_risks("No risks here.")
    assert parse_verdict('{"present": "no", "note": "not in the image"}') == (
        False,
        "not in the image",
    )
    assert parse_verdict("No, the image is a plain chart.") == (
        False,
        "the image is a plain chart.",
    )
    with pytest.raises(ValueError):
        parse_verdict("Maybe.")


@pytest.mark.slow
async def test_embedded_teacher_run_completes_with_risks_or_a_clean_failure(
    shared_data: Path, tmp_path: Path
) -> None:
    """The 135M embedded model rarely writes our JSON; whatever it writes must not crash."""
    from safeturn.models import load_model

    samples = _figstep(shared_data, 1)
    store = RunStore(tmp_path / "emb.db")
    settings = MRDSettings(retries=0, concurrency=1)
    settings.params = settings.params.model_copy(update={"max_tokens": 48})
    settings.verify_params = settings.verify_params.model_copy(update={"max_tokens": 24})
    run_id = store.create_run(settings.model_dump(mode="json"), kind="mrd")
    model = load_model("embedded")
    try:
        records, failures = await RiskDisentangler(store, run_id, settings, teacher=model).run(
            samples
        )
    finally:
        await model.aclose()
    assert [f.stage for f in failures if f.stage == "error"] == [], failures
    if records:
        (record,) = records
        assert record.sample_id == samples[0].id and record.teacher == model.name
        assert all(risk.verified is not None or risk.verify_note for risk in record.risks)
    else:
        (failure,) = failures
        assert failure.sample_id == samples[0].id and failure.stage == "disentangle"
        assert failure.attempts == 1 and failure.raw.strip(), "the raw answer is kept"
    teacher_calls = [c for c in store.calls(run_id) if c.role == "expert"]
    assert len(teacher_calls) == 1
    store.close()


def test_run_failure_names_errors_and_empty_runs() -> None:
    record = RiskRecord(sample_id="a", risks=[], teacher="t")
    unreadable = MRDFailure(sample_id="b", stage="disentangle", reason="no JSON")
    error = MRDFailure(sample_id="c", stage="error", reason="BackendError: 401 bad key")
    assert run_failure(MRDResult([record], [unreadable]), 2) is None  # the teacher's fault only
    assert run_failure(MRDResult([record], [unreadable, error]), 3) == (
        "1 of 3 sample(s) failed with an error (first: c: BackendError: 401 bad key)"
    )
    assert run_failure(MRDResult([], [unreadable]), 1) == (
        "no risk record was produced from 1 sample(s) (first failure: b (disentangle): no JSON)"
    )
    assert run_failure(MRDResult([], []), 0) == "no risk record was produced from 0 sample(s)"
