"""Reports: a Safety Index over a partial set of turn counts says so everywhere it is printed,
SafeMT's fixed K is offered beside it, and every ASR carries the bootstrap interval it names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from safeturn.judges.refusal import RefusalJudge
from safeturn.metrics import bootstrap_rate, cluster_bootstrap_rate, rate
from safeturn.models.scripted import REFUSAL_TEXT, ScriptedModel
from safeturn.report.compare import before_after, before_after_json, print_before_after
from safeturn.report.export import print_comparison
from safeturn.report.html import render_html
from safeturn.report.terminal import print_summary, write_summary_json
from safeturn.run.engine import EvalSettings, execute_run, start_run
from safeturn.run.results import RunResults, load_results
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, Message, Sample

COMPLY = "Sure, here is exactly how to do it, step by step."
CATEGORIES = ("illegal_activity", "privacy")


def samples(turn_counts: Sequence[int], seeds: int = 6) -> list[Sample]:
    """`seeds` seeds, each built at every turn count; seed i complies when i % 3 == 0."""
    out = []
    for i in range(seeds):
        for k in turn_counts:
            messages: list[Message] = []
            for turn in range(1, k + 1):
                messages.append(Message.user(f"seed {i}: turn {turn} of {k}"))
                if turn < k:
                    messages.append(Message.assistant("(pre-written)"))
            out.append(
                Sample(
                    id=f"s{i}-k{k}",
                    source="test",
                    category=CATEGORIES[i % 2],
                    strategy="escalation",
                    harmful=True,
                    dialogue=Dialogue(messages=messages),
                    metadata={"seed_id": f"seed{i}"},
                )
            )
    return out


def answer(dialogue: Dialogue) -> str:
    seed = int(dialogue.messages[-1].text.split(":")[0].removeprefix("seed "))
    return COMPLY if seed % 3 == 0 else REFUSAL_TEXT


def run(tmp: Path, turn_counts: Sequence[int], name: str) -> RunResults:
    store = RunStore(tmp / f"{name}.db")
    settings = EvalSettings(model=f"scripted:{name}", judges=["refusal"], mode="replay")
    run_id = start_run(store, samples(turn_counts), settings)
    asyncio.run(execute_run(store, run_id, ScriptedModel(answer, name=name), [RefusalJudge()]))
    results = load_results(store, run_id)
    store.close()
    return results


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> RunResults:
    return run(tmp_path_factory.mktemp("partial"), (1, 2, 4), "partial")


@pytest.fixture(scope="module")
def complete(tmp_path_factory: pytest.TempPathFactory) -> RunResults:
    return run(tmp_path_factory.mktemp("complete"), (1, 2, 4, 6, 8), "complete")


def terminal(results: RunResults) -> str:
    console = Console(record=True, width=200)
    print_summary(results, console)
    return console.export_text()


def test_partial_safety_index_is_labelled_in_the_terminal(partial: RunResults) -> None:
    text = terminal(partial)
    assert "PARTIAL Safety Index" in text
    assert "partial: over turn counts {1, 2, 4}, not SafeMT's {1, 2, 4, 6, 8}" in text
    assert "not comparable with SafeMT's tables" in text
    fixed = partial.safety_index("exp", "safemt")
    assert fixed is not None and fixed.missing == (6, 8)
    assert f"Safety Index with SafeMT's fixed K {{1, 2, 4, 6, 8}}: {fixed.value:.3f}" in text


def test_partial_safety_index_is_labelled_in_the_json(partial: RunResults, tmp_path: Path) -> None:
    summary = json.loads(write_summary_json(partial, tmp_path / "s.json").read_text())
    si = summary["safety_index"]["exp"]
    assert si["partial"] is True and si["missing"] == [6, 8]
    assert si["note"].startswith("partial: over turn counts {1, 2, 4}")
    fixed = summary["safety_index_safemt_k"]["exp"]
    assert fixed["fixed_k"] is True and fixed["partial"] is True
    assert list(fixed["weights"]) == ["1", "2", "4", "6", "8"]
    assert fixed["note"].startswith("partial: no data at turn counts {6, 8}")


def test_partial_safety_index_is_labelled_in_the_html(partial: RunResults) -> None:
    html = render_html(partial)
    assert "<h2>Safety Index (partial)</h2>" in html
    assert "Partial Safety Index:</b> partial: over turn counts {1, 2, 4}" in html
    assert "SafeMT&#39;s fixed K {1, 2, 4, 6, 8}" in html
    assert html.count("<b>(partial)</b>") == 4  # both variants, both turn sets


def test_partial_safety_index_is_labelled_in_compare(
    partial: RunResults, complete: RunResults
) -> None:
    console = Console(record=True, width=240)
    print_comparison([partial, complete], console)
    text = console.export_text()
    assert "Safety Index, run's turn counts" in text and "(partial)" in text
    assert "Safety Index, SafeMT's fixed K {1, 2, 4, 6, 8}" in text
    assert f"{partial.run_id}, run's turn counts: partial: over turn counts {{1, 2, 4}}" in text
    assert complete.run_id + ", run's" not in text  # the complete run is not partial
    report = before_after(partial, partial, n_resamples=50)
    rows = {row.key: row for row in report.rows}
    assert rows["safety_index"].note.startswith("partial: over turn counts {1, 2, 4}")
    assert rows["asr"].note == ""
    assert before_after_json(report)["metrics"]["safety_index"]["partial"] is True
    fixed = before_after(partial, partial, n_resamples=50, turn_set="safemt")
    fixed_row = next(row for row in fixed.rows if row.key == "safety_index")
    assert "SafeMT's fixed K" in fixed_row.label and "no data at turn counts {6, 8}" in (
        fixed_row.note
    )
    console = Console(record=True, width=240)
    print_before_after(report, console)
    assert "Safety Index (SafeMT, exp(-k)) (partial)" in console.export_text()


def test_a_complete_run_is_not_labelled_partial(complete: RunResults, tmp_path: Path) -> None:
    text = terminal(complete)
    assert "Safety Index" in text and "PARTIAL" not in text and "partial" not in text
    assert "SafeMT's fixed K" not in text  # the same number: not repeated
    summary = json.loads(write_summary_json(complete, tmp_path / "s.json").read_text())
    assert summary["safety_index"]["exp"]["partial"] is False
    assert summary["safety_index"]["exp"]["note"] is None
    html = render_html(complete)
    assert "(partial)" not in html and "Partial Safety Index" not in html


def test_asr_by_category_and_strategy_use_the_bootstrap_and_say_so(
    partial: RunResults, tmp_path: Path
) -> None:
    by_category = partial.attack_success_by("category")
    for name, value in by_category.items():
        flags = [r.label == "unsafe" for r in partial.judged() if r.category == name]
        assert value == bootstrap_rate(flags)
    mixed = by_category["illegal_activity"]  # seeds 0, 2, 4: seed 0 complies
    assert mixed[:2] == (3, 9)
    assert mixed != rate(3, 9), "a Wilson interval where DESIGN asks for bootstrap"
    strategy = partial.attack_success_by("strategy")["escalation"]
    assert strategy == cluster_bootstrap_rate([[flag] for flag in _flags(partial)])
    text = terminal(partial)
    assert "attack success by category" in text and "ASR (95% bootstrap CI, n)" in text
    assert "intervals: ASR 95% percentile bootstrap over items" in text
    assert "Other rates 95% Wilson score" in text
    html = render_html(partial)
    assert "<th>ASR (95% bootstrap CI, n)</th>" in html
    assert "Every attack success rate: 95% percentile bootstrap over items" in html
    assert str(mixed) in html
    summary = json.loads(write_summary_json(partial, tmp_path / "s.json").read_text())
    assert summary["intervals"]["attack_success"].startswith("bootstrap: 95% percentile")
    assert summary["attack_success_by_category"]["illegal_activity"]["ci95"] == [
        mixed.low,
        mixed.high,
    ]


def _flags(results: RunResults) -> list[bool]:
    return [r.label == "unsafe" for r in results.judged()]


def test_replies_are_escaped_in_the_html_report(tmp_path: Path) -> None:
    """The template is `run.html.j2`: autoescape must cover that name, or replies run as HTML."""
    store = RunStore(tmp_path / "x.db")
    settings = EvalSettings(model="scripted:x", judges=["refusal"], mode="replay")
    run_id = start_run(store, samples((1,), seeds=1), settings)
    hostile = ScriptedModel(lambda _d: "<script>alert('pwned')</script>", name="x")
    asyncio.run(execute_run(store, run_id, hostile, [RefusalJudge()]))
    html = render_html(load_results(store, run_id))
    store.close()
    assert "<script>alert(" not in html
    assert "&lt;script&gt;alert(" in html
