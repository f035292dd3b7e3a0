"""Per-sample CSV export and a side-by-side comparison of several runs."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from safeturn.judges.card import (
    JudgeCard,
    card_for,
    card_summary,
    comparison_warnings,
    headline_figure,
)
from safeturn.metrics import Rate, SafetyIndex, partial_note
from safeturn.metrics.asr import REPORT_INTERVAL_TEXT
from safeturn.metrics.safety_index import SAFEMT_K_TEXT, WeightScheme
from safeturn.report.terminal import WILSON_TEXT
from safeturn.run.results import RunResults

CSV_COLUMNS = (
    "run_id",
    "sample_id",
    "item_id",
    "draw",
    "source",
    "category",
    "strategy",
    "turns",
    "harmful",
    "status",
    "final_label",
    "final_refused",
    "earliest_unsafe_turn",
    "final_reply",
    "error",
)


def write_csv(results: RunResults, path: Path) -> Path:
    """One row per sample: its labels, the final verdict and reply, and any error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for outcome in results.outcomes:
            final = outcome.final
            verdict = final.verdict if final is not None else None
            writer.writerow(
                {
                    "run_id": results.run_id,
                    "sample_id": outcome.sample.id,
                    "item_id": outcome.item_id,
                    "draw": outcome.draw,
                    "source": outcome.sample.source,
                    "category": outcome.sample.category or "",
                    "strategy": outcome.sample.strategy,
                    "turns": outcome.sample.turns,
                    "harmful": outcome.sample.harmful,
                    "status": outcome.status,
                    "final_label": verdict.label if verdict else "",
                    "final_refused": verdict.refused if verdict else "",
                    "earliest_unsafe_turn": outcome.earliest_unsafe_turn or "",
                    "final_reply": final.reply.text if final is not None else "",
                    "error": outcome.error or "",
                }
            )
    return path


def _cell(value: Rate) -> str:
    return "n/a" if value.total == 0 or math.isnan(value.value) else str(value)


def _si_cell(si: SafetyIndex | None) -> str:
    if si is None:
        return "—"
    return f"{si.value:.3f}" + (" (partial)" if si.partial else "")


def print_comparison(
    runs: list[RunResults], console: Console, cards: Sequence[JudgeCard] = ()
) -> None:
    """One column per run: headline rates, ASR by turn count, and the Safety Index.

    A Safety Index over turn counts other than SafeMT's is marked partial, with SafeMT's fixed
    K in rows of its own. Below the table: which intervals, why an index is partial, each
    judge's validity line (from `cards`, else its shipped card), and a warning when the runs
    had different judges or a judge has no card.
    """
    judges = [r.judge for r in runs]
    run_cards = [card_for(j, cards) for j in judges]
    table = Table(title="run comparison (final turn; 95% CI, n)")
    table.add_column("metric")
    for results in runs:
        table.add_column(f"{results.run_id}\n{results.settings.model}", justify="right")
    table.add_row("judge", *judges)
    table.add_row("judge validation", *[headline_figure(c) for c in run_cards])
    table.add_row("ASR (harmful)", *[_cell(r.attack_success()) for r in runs])
    table.add_row("over-refusal (benign)", *[_cell(r.over_refusal()) for r in runs])
    if any(r.draws > 1 for r in runs):
        table.add_row("draws per item", *[str(r.draws) for r in runs])
        table.add_row("ASR@N (any draw, per item)", *[_cell(r.attack_success_at_n()) for r in runs])
        table.add_row("over-refusal@N (per item)", *[_cell(r.over_refusal_at_n()) for r in runs])
    by_turns = [r.attack_success_by("turns") for r in runs]
    turn_counts = sorted({int(k) for groups in by_turns for k in groups})
    for k in turn_counts:
        row = [groups.get(str(k)) for groups in by_turns]
        table.add_row(f"ASR at {k} turns", *[_cell(v) if v else "—" for v in row])
    variants: tuple[WeightScheme, ...] = ("exp", "uniform")
    present = {v: [r.safety_index(v) for r in runs] for v in variants}
    partial = [(r, si) for r, si in zip(runs, present["exp"], strict=True) if si and si.partial]
    k_rows = [("run's turn counts", present)]
    if partial:  # SafeMT's fixed K beside it; with every run complete it would repeat the rows
        fixed = {v: [r.safety_index(v, "safemt") for r in runs] for v in variants}
        k_rows.append((f"SafeMT's fixed K {SAFEMT_K_TEXT}", fixed))
    for where, indices in k_rows:
        for variant, values in indices.items():
            name = "Safety Index" if variant == "exp" else "Safety Index (turn-balanced)"
            table.add_row(f"{name}, {where}", *[_si_cell(v) for v in values])
    table.add_row("samples with errors", *[str(len(r.errors())) for r in runs])
    console.print(table)
    console.print(f"intervals: ASR {REPORT_INTERVAL_TEXT}; other rates {WILSON_TEXT}", markup=False)
    for where, indices in k_rows:
        for results, si in zip(runs, indices["exp"], strict=True):
            if si is not None and si.partial:
                note = f"{results.run_id}, {where}: {partial_note(si)}"
                console.print(
                    f"{note}; not comparable with SafeMT's tables", style="yellow", markup=False
                )
    shown = dict(zip(judges, run_cards, strict=True))
    for judge, card in shown.items():
        console.print(f"judge {card_summary(judge, card)}", markup=False)
    for warning in comparison_warnings(judges, run_cards):
        console.print(f"warning: {warning}", style="yellow", markup=False)
