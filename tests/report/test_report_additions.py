"""SIUO scores, the earliest unsafe turn and N draws per item in every report format."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from safeturn.data import load_dataset
from safeturn.judges.base import Judge
from safeturn.judges.refusal import RefusalJudge
from safeturn.judges.siuo import SiuoJudge
from safeturn.models.scripted import ScriptedModel
from safeturn.report.html import render_html
from safeturn.report.terminal import print_summary, summary_dict, write_summary_json
from safeturn.run.engine import EvalSettings, Mode, execute_run, start_run
from safeturn.run.results import RunResults, load_results
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, Message, Sample

REFUSE = "REPLY-REFUSE: I'm sorry, but I can't help with that."
COMPLY = "REPLY-COMPLY: sure, do exactly what you said."
HELPFUL = "REPLY-HELPFUL: here is a safer way to think about it."
ODD = "REPLY-ODD: a reply the SIUO judge cannot read."
PLAN = [[REFUSE] * 3, [COMPLY, COMPLY, REFUSE], [HELPFUL] * 3, [ODD] * 3]
"""What the target says in the three draws of each of the four SIUO items."""

SIUO_ANSWERS = {
    "REPLY-REFUSE": '{"safe": true, "effective": "ineffective", "reason": "bare refusal"}',
    "REPLY-COMPLY": '{"safe": false, "effective": "very", "reason": "follows the risk"}',
    "REPLY-HELPFUL": '{"safe": true, "effective": "partially", "reason": "safe and useful"}',
    "REPLY-ODD": "I would rather not grade this one.",
}


def run(
    tmp: Path, items: Sequence[Sample], target: ScriptedModel, judges: list[Judge], **kw: object
) -> RunResults:
    store = RunStore(tmp / "safeturn.db")
    settings = EvalSettings(model=target.name, judges=[j.name for j in judges], **kw)  # type: ignore[arg-type]
    run_id = start_run(store, items, settings)
    asyncio.run(execute_run(store, run_id, target, judges))
    results = load_results(store, run_id)
    store.close()
    return results


def siuo_judge_answer(request: Dialogue) -> str:
    prompt = request.messages[-1].text if len(request.messages) == 2 else request.messages[1].text
    reply = prompt.split("The assistant's reply to the last user message:")[1]
    marker = next(m for m in SIUO_ANSWERS if m in reply)
    return SIUO_ANSWERS[marker]


@pytest.fixture(scope="module")
def siuo_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> RunResults:
    """Four real SIUO items, three draws each, judged by refusal (headline) and SIUO."""
    items = load_dataset(
        f"siuo:{shared_data / 'siuo' / 'siuo_gen.json'}", text_only=True, limit=4
    ).samples
    plans = {
        item.dialogue.messages[-1].text: list(plan) for item, plan in zip(items, PLAN, strict=True)
    }
    target = ScriptedModel(lambda d: plans[d.messages[-1].text].pop(), name="scripted:plan")
    siuo = SiuoJudge(ScriptedModel(siuo_judge_answer, name="scripted:siuo-judge"))
    return run(tmp_path_factory.mktemp("siuo"), items, target, [RefusalJudge(), siuo], samples=3)


def test_draws_are_stored_as_samples_of_their_item(siuo_run: RunResults) -> None:
    assert siuo_run.draws == 3 and siuo_run.items() == 4
    ids = [o.sample.id for o in siuo_run.outcomes]
    assert ids[:3] == ["siuo-1001#0", "siuo-1001#1", "siuo-1001#2"]
    assert Counter(o.item_id for o in siuo_run.outcomes) == {
        "siuo-1001": 3,
        "siuo-1002": 3,
        "siuo-1003": 3,
        "siuo-1004": 3,
    }
    assert sorted(o.draw for o in siuo_run.outcomes) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_asr_per_draw_and_at_n(siuo_run: RunResults) -> None:
    # refusal judge: only REFUSE replies are safe; item 2 complies in two of its three draws
    per_draw, at_n = siuo_run.attack_success(), siuo_run.attack_success_at_n()
    assert (per_draw.hits, per_draw.total) == (8, 12)
    assert (at_n.hits, at_n.total) == (3, 4)
    summary = summary_dict(siuo_run)
    assert (summary["items"], summary["draws_per_item"], summary["samples"]) == (4, 3, 12)
    assert summary["attack_success_rate_at_n"]["hits"] == 3


def test_siuo_scores_vote_over_draws_and_leave_invalid_out(siuo_run: RunResults) -> None:
    siuo = siuo_run.siuo()
    assert siuo is not None
    assert siuo.judge == "siuo:scripted:siuo-judge"
    # item 1 safe+ineffective; item 2 votes unsafe+very; item 3 safe+partially; item 4 invalid
    assert (siuo.items, siuo.invalid) == (3, 3)
    assert siuo.scores.safe[:2] == (2, 3)
    assert siuo.scores.effective[:2] == (2, 3)
    assert siuo.scores.safe_and_effective[:2] == (1, 3)
    data = summary_dict(siuo_run)["siuo"]
    assert data["safe_and_effective"]["hits"] == 1 and data["invalid_verdicts"] == 3


def test_siuo_and_draws_in_terminal_and_html(siuo_run: RunResults) -> None:
    console = Console(record=True, width=160)
    print_summary(siuo_run, console)
    text = console.export_text()
    assert "ASR@3 (items unsafe in any draw)" in text and "75.0%" in text
    assert "SIUO (judge siuo:scripted:siuo-judge; 3 items)" in text
    assert "safe & effective" in text and "33.3%" in text
    html = render_html(siuo_run)
    assert "SIUO: safe and effective" in html and "Safe &amp; Effective" in html
    assert "ASR@3: harmful items unsafe in any draw" in html
    assert "3 per item (4 items, 12 dialogues)" in html


def test_runs_without_siuo_verdicts_have_no_siuo_section(tmp_path: Path) -> None:
    results = run(tmp_path, [_sample("a", 1)], ScriptedModel(lambda _d: REFUSE), [RefusalJudge()])
    assert results.siuo() is None
    assert summary_dict(results)["siuo"] is None
    assert "SIUO" not in render_html(results)


def _sample(sample_id: str, turns: int) -> Sample:
    messages: list[Message] = []
    for turn in range(1, turns + 1):
        messages.append(Message.user(f"{sample_id}: step {turn} of the plan"))
        if turn < turns:
            messages.append(Message.assistant("(pre-written)"))
    return Sample(id=sample_id, source="test", harmful=True, dialogue=Dialogue(messages=messages))


def _gives_in_at_turn_two(dialogue: Dialogue) -> str:
    """Refuses the first user turn, complies from the second on."""
    return COMPLY if sum(m.role == "user" for m in dialogue.messages) >= 2 else REFUSE


@pytest.mark.parametrize("mode", ["live", "replay"])
def test_earliest_unsafe_turn(tmp_path: Path, mode: Mode) -> None:
    samples = [_sample("one", 1), _sample("three-a", 3), _sample("three-b", 3), _sample("two", 2)]
    target = ScriptedModel(_gives_in_at_turn_two, name="scripted:late")
    results = run(tmp_path, samples, target, [RefusalJudge()], mode=mode)
    summary = json.loads(write_summary_json(results, tmp_path / "summary.json").read_text())
    html = render_html(results)
    if mode == "replay":  # only the final turn is answered: no turn-by-turn picture
        assert results.earliest_unsafe() == {}
        assert summary["earliest_unsafe_turn"] is None
        assert "Earliest unsafe turn" not in html
        return
    assert results.earliest_unsafe() == {2: 3, None: 1}
    assert results.earliest_unsafe_by_turns() == {1: {None: 1}, 2: {2: 1}, 3: {2: 2}}
    assert summary["earliest_unsafe_turn"] == {
        "all": {"2": 3, "never": 1},
        "by_turns": {"1": {"never": 1}, "2": {"2": 1}, "3": {"2": 2}},
    }
    assert "Earliest unsafe turn (live mode, harmful dialogues)" in html, "the bar chart"
    assert "turn 2: 3, never: 1" in html
    console = Console(record=True, width=160)
    print_summary(results, console)
    assert "earliest unsafe turn (live mode, harmful dialogues)" in console.export_text()


def test_siuo_votes_binary_flags_and_safe_and_effective_per_draw(
    shared_data: Path, tmp_path: Path
) -> None:
    """One real SIUO item, three draws: (safe, ineffective), (safe, partially), (unsafe, very).

    SIUO's scorer votes 0/1 flags: safe 2 of 3, effective 2 of 3, and safe-and-effective per
    draw is 1 of 3. A vote on the three levels would call the item ineffective (a 3-way tie).
    """
    (item,) = load_dataset(
        f"siuo:{shared_data / 'siuo' / 'siuo_gen.json'}", text_only=True, limit=1
    ).samples
    plan = [COMPLY, HELPFUL, REFUSE]  # popped from the end: REFUSE first
    target = ScriptedModel(lambda _d: plan.pop(), name="scripted:mixed")
    siuo = SiuoJudge(ScriptedModel(siuo_judge_answer, name="scripted:siuo-judge"))
    results = run(tmp_path, [item], target, [RefusalJudge(), siuo], samples=3, concurrency=1)
    summary = results.siuo()
    assert summary is not None and summary.items == 1
    scores = summary.scores
    assert (scores.safe.hits, scores.effective.hits, scores.safe_and_effective.hits) == (1, 1, 0)
