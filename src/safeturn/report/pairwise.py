"""Pairwise comparison of two runs: A's win rate over B by a pairwise judge.

Only samples that both runs answered to the final turn are compared; the others are counted
(only in A, only in B, unanswered in one of them) so a win rate never hides a coverage gap.
Invalid pairwise judgements are counted and kept in the JSON, not folded into ties.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.table import Table

from safeturn.judges.pairwise import PairRequest, PairVerdict
from safeturn.metrics.winrate import Outcome, WinRate, win_rate
from safeturn.report.versions import PAIRWISE_SCHEMA_VERSION
from safeturn.run.results import RunResults, SampleOutcome
from safeturn.schema import Dialogue, Sample


class PairMatch(NamedTuple):
    """The comparisons two runs allow, and the sample ids that could not be compared."""

    requests: list[PairRequest]
    only_a: list[str]
    only_b: list[str]
    unanswered: list[str]
    """In both runs, but without a final reply in at least one of them."""


class PairwiseReport(NamedTuple):
    """A's win rate over B by one pairwise judge, with coverage and every verdict."""

    run_a: RunResults
    run_b: RunResults
    judge: str
    win_rate: WinRate
    by_turns: dict[int, WinRate]
    verdicts: list[PairVerdict]
    match: PairMatch

    @property
    def invalid(self) -> list[PairVerdict]:
        """Comparisons the judge could not decide (left out of the win rate)."""
        return [v for v in self.verdicts if v.outcome == "invalid"]


def shared_dialogue(sample: Sample, live: bool) -> Dialogue:
    """What both replies answer: the sample's dialogue (replay) or its non-assistant turns (live).

    In live mode each model wrote its own earlier replies, so only the user (and system) turns
    are common to A and B.
    """
    if not live:
        return sample.dialogue
    return Dialogue(messages=[m for m in sample.dialogue.messages if m.role != "assistant"])


def match_runs(a: RunResults, b: RunResults) -> PairMatch:
    """Pair the final replies of A and B by sample id (draw ids match draw for draw)."""
    by_id: dict[str, SampleOutcome] = {o.sample.id: o for o in b.outcomes}
    ids_a = {o.sample.id for o in a.outcomes}
    live = "live" in (a.settings.mode, b.settings.mode)
    requests: list[PairRequest] = []
    unanswered: list[str] = []
    for outcome in a.outcomes:
        other = by_id.get(outcome.sample.id)
        if other is None:
            continue
        final_a, final_b = outcome.final, other.final
        if final_a is None or final_b is None:
            unanswered.append(outcome.sample.id)
            continue
        dialogue = shared_dialogue(outcome.sample, live)
        requests.append(PairRequest(outcome.sample, dialogue, final_a.reply, final_b.reply))
    only_a = sorted(ids_a - by_id.keys())
    only_b = sorted(by_id.keys() - ids_a)
    return PairMatch(requests, only_a, only_b, unanswered)


def _win_rate(verdicts: list[PairVerdict]) -> WinRate:
    outcomes: list[Outcome] = [v.outcome for v in verdicts if v.outcome != "invalid"]
    return win_rate(outcomes)


def pairwise_report(
    a: RunResults, b: RunResults, judge: str, match: PairMatch, verdicts: list[PairVerdict]
) -> PairwiseReport:
    """Summarise the verdicts of `match.requests` (in the same order) as A's win rate."""
    turns: dict[int, list[PairVerdict]] = defaultdict(list)
    for request, verdict in zip(match.requests, verdicts, strict=True):
        turns[request.sample.turns].append(verdict)
    by_turns = {k: _win_rate(turns[k]) for k in sorted(turns)}
    return PairwiseReport(a, b, judge, _win_rate(verdicts), by_turns, verdicts, match)


def print_pairwise(report: PairwiseReport, console: Console) -> None:
    """A's win rate against B (overall and by turn count), coverage and invalid judgements."""
    a, b = report.run_a, report.run_b
    table = Table(
        title=(
            f"pairwise: A = {a.run_id} ({a.settings.model}) vs B = {b.run_id} "
            f"({b.settings.model}); judge {report.judge}"
        )
    )
    table.add_column("compared")
    table.add_column("win rate of A (ties ½; 95% CI; A / B / tie)", justify="right")
    table.add_row("all samples", str(report.win_rate))
    if len(report.by_turns) > 1:
        for turns, value in report.by_turns.items():
            table.add_row(f"{turns} turns", str(value))
    console.print(table)
    match = report.match
    console.print(
        f"matched {len(match.requests)} samples by id; invalid judgements {len(report.invalid)}; "
        f"only in A {len(match.only_a)}, only in B {len(match.only_b)}, "
        f"without a final reply in A or B {len(match.unanswered)}"
    )
    for verdict in report.invalid[:5]:
        console.print(f"[yellow]invalid[/yellow] {verdict.sample_id}: {verdict.rationale[:300]}")


def _win_json(value: WinRate) -> dict[str, Any]:
    data = value._asdict()
    data["value"] = None if math.isnan(value.value) else value.value
    return data


def pairwise_json(report: PairwiseReport) -> dict[str, Any]:
    """The report as JSON-ready data, every verdict included."""
    match = report.match
    return {
        "schema_version": PAIRWISE_SCHEMA_VERSION,
        "run_a": {"id": report.run_a.run_id, "model": report.run_a.settings.model},
        "run_b": {"id": report.run_b.run_id, "model": report.run_b.settings.model},
        "judge": report.judge,
        "win_rate_a": _win_json(report.win_rate),
        "win_rate_a_by_turns": {str(k): _win_json(v) for k, v in report.by_turns.items()},
        "matched": len(match.requests),
        "invalid": len(report.invalid),
        "only_in_a": match.only_a,
        "only_in_b": match.only_b,
        "without_final_reply": match.unanswered,
        "verdicts": [v.model_dump(mode="json") for v in report.verdicts],
    }


def write_pairwise_json(report: PairwiseReport, path: Path) -> Path:
    """Write `pairwise_json` to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pairwise_json(report), indent=2), encoding="utf-8")
    return path
