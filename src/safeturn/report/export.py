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
from safeturn.metrics import Rate
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


def print_comparison(
    runs: list[RunResults], console: Console, cards: Sequence[JudgeCard] = ()
) -> None:
    """One column per run: headline rates, ASR by turn count, and the Safety Index.

    Below the table: each judge's validity line (from `cards`, else its shipped card), and a
    warning when the runs had different judges or a judge has no card.
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
    turn_counts = sorted({int(k) for r in runs for k in r.attack_success_by("turns")})
    for k in turn_counts:
        row = [r.attack_success_by("turns").get(str(k)) for r in runs]
        table.add_row(f"ASR at {k} turns", *[_cell(v) if v else "—" for v in row])
    for variant in ("exp", "uniform"):
        values = [r.safety_index(variant) for r in runs]
        name = "Safety Index" if variant == "exp" else "Safety Index (turn-balanced)"
        table.add_row(name, *[f"{v.value:.3f}" if v else "—" for v in values])
    table.add_row("samples with errors", *[str(len(r.errors())) for r in runs])
    console.print(table)
    shown = dict(zip(judges, run_cards, strict=True))
    for judge, card in shown.items():
        console.print(f"judge {card_summary(judge, card)}", markup=False)
    for warning in comparison_warnings(judges, run_cards):
        console.print(f"warning: {warning}", style="yellow", markup=False)
