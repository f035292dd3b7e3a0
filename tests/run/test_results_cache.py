"""RunResults computes each rate once; a copy with other outcomes or settings computes its own."""

from __future__ import annotations

import gc
import math

import pytest

from safeturn.run.engine import EvalSettings, bulk_objects
from safeturn.run.results import RunResults, SampleOutcome, TurnRecord
from safeturn.schema import Dialogue, Message, Reply, Sample, Verdict, VerdictLabel


def outcome(i: int, label: VerdictLabel, *, strategy: str = "none") -> SampleOutcome:
    sample = Sample(
        id=f"s{i}",
        source="t",
        harmful=True,
        strategy=strategy,
        dialogue=Dialogue(messages=[Message.user(f"turn 1 of {i}")]),
    )
    verdict = Verdict(sample_id=sample.id, turn=1, judge="refusal", label=label, refused=False)
    record = TurnRecord(turn=1, reply=Reply(text="ok", model="m"), verdict=verdict)
    return SampleOutcome(sample=sample, status="done", error=None, turns=[record])


def results(labels: list[VerdictLabel]) -> RunResults:
    outcomes = [outcome(i, label, strategy=("a", "b")[i % 2]) for i, label in enumerate(labels)]
    verdicts = [t.verdict for o in outcomes for t in o.turns if t.verdict is not None]
    settings = EvalSettings(model="scripted:test", judges=["refusal"])
    return RunResults(
        run_id="r", settings=settings, judge="refusal", outcomes=outcomes, verdicts=verdicts
    )


def test_repeated_questions_give_the_same_answers() -> None:
    run = results(["unsafe", "safe", "unsafe", "safe", "safe", "unsafe"])
    first = run.attack_success()
    assert run.attack_success() is first  # computed once
    assert (first.hits, first.total) == (3, 6)
    assert run.attack_success_by("strategy") == run.attack_success_by("strategy")
    assert run.safety_index() == run.safety_index()
    assert run.attack_success(interval="wilson") != first  # another interval, another entry


def test_returned_containers_do_not_change_the_cache() -> None:
    run = results(["unsafe", "safe"])
    run.attack_success_by("strategy").clear()
    run.judged().clear()
    run.earliest_unsafe().clear()
    run.errors().append(run.outcomes[0])
    assert set(run.attack_success_by("strategy")) == {"a", "b"}
    assert len(run.judged()) == 2
    assert run.earliest_unsafe() == {1: 1, None: 1}
    assert run.errors() == []


def test_a_copy_with_other_outcomes_or_settings_computes_its_own() -> None:
    run = results(["unsafe", "unsafe", "safe", "safe"])
    assert run.attack_success().hits == 2
    fewer = run.model_copy(update={"outcomes": run.outcomes[:2]})
    assert (fewer.attack_success().hits, fewer.attack_success().total) == (2, 2)
    assert (run.attack_success().hits, run.attack_success().total) == (2, 4)
    assert run.items() == 4 and fewer.items() == 2
    replay = run.model_copy(update={"settings": run.settings.model_copy(update={"mode": "replay"})})
    assert run.earliest_unsafe() and replay.earliest_unsafe() == {}


def test_an_empty_run_has_no_rates() -> None:
    run = results([])
    assert math.isnan(run.attack_success().value)
    assert run.safety_index() is None and run.items() == 0


def test_bulk_objects_pauses_the_collector_and_freezes_what_it_kept() -> None:
    assert gc.isenabled()
    with bulk_objects():
        assert not gc.isenabled()
        kept = [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept), "no later collection walks them again"
    gc.unfreeze()
    with pytest.raises(RuntimeError), bulk_objects():
        raise RuntimeError("a failing load")
    assert gc.isenabled()
    gc.disable()
    try:
        with bulk_objects():
            pass
        assert not gc.isenabled(), "a collector someone else turned off stays off"
    finally:
        gc.enable()
        gc.unfreeze()
