"""`safeturn judge refusal-eval`: the refusal detector against people, one model held out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
if not console.is_terminal:
    console = Console(width=120)  # a pipe gets 80 columns by default, too few for the CIs

_DETECTORS = {"new": "new, fit", "new_default_threshold": "new, shipped", "old": "old regex"}
_METRICS = ("kappa", "accuracy", "precision", "recall")
_VARIANTS = {
    "refused_vs_compliance": "full+partial",
    "full_refusal_vs_compliance": "full (partial out)",
    "partial_as_compliance": "full only",
}


def _cell(result: dict[str, Any], metric: str) -> str:
    value = f"{result[metric]:.3f}"
    if "ci95" not in result:
        return value
    low, high = result["ci95"][metric]
    return f"{value} ({low:.2f}-{high:.2f})"


def refusal_eval_command(
    data_dir: Annotated[
        Path, typer.Option(help="folder holding xstest/model_completions/ (read only)")
    ] = Path("../shared/data"),
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the 95 % CIs")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
) -> None:
    """Score the refusal detector on XSTest completions, leaving one model out at a time.

    The threshold is fit on two models' replies and scored on the third; the old regex detector
    is scored on the same replies. Which models the rules were written with is in the JSON.
    """
    from safeturn.judges.refusal_eval import lomo_report

    report = lomo_report(data_dir, n_boot=bootstrap, seed=seed)
    for model, fold in report["folds"].items():
        console.print(_fold_table(model, fold))
    console.print("(95 % bootstrap CIs in parentheses; every figure is in the JSON)")
    round_1 = report["provenance"]["round_1"]["mistralinstruct_measured_once_at_threshold_2"]
    console.print(
        f"{report['microseconds_per_reply']} µs per reply (old: "
        f"{report['microseconds_per_reply_old']} µs). Rules written without seeing "
        f"mistralinstruct scored κ {round_1['kappa']:.3f} on it (old: "
        f"{round_1['old_detector_kappa']:.3f}); since then "
        f"{escape(report['provenance']['round_2']['consequence'])}",
        soft_wrap=True,
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {escape(str(json_out))}")


def _fold_table(model: str, fold: dict[str, Any]) -> Table:
    """One held-out model: every detector's kappa, accuracy, precision and recall per variant."""
    table = Table(
        title=f"held out: {model} (n = {fold['n']}; threshold {fold['threshold']:g} fit on "
        f"{' + '.join(fold['threshold_fit_on'])})"
    )
    for column in ("refused =", "detector"):
        table.add_column(column, justify="left")
    for column in _METRICS:
        table.add_column(column, justify="right")
    for variant, results in fold["variants"].items():
        for name, shown in _DETECTORS.items():
            row = results[name]
            table.add_row(_VARIANTS[variant], shown, *(_cell(row, m) for m in _METRICS))
    return table
