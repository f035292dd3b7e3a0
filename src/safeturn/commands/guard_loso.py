"""`safeturn guard loso`: the moderator's quality on sources it never saw (see `guard/loso.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.commands.guard import HarmLayersOpt

console = Console()


_AGAINST = {"itself": "itself", "benign": "benign test", "harmful": "harmful test"}
"""Short names for what a left-out family was ranked against (the JSON says it in full)."""


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def loso_command(
    data_root: Annotated[
        Path,
        typer.Option(help="folder holding figstep/, xstest/, hh-rlhf-harmless/, ... (read only)"),
    ] = Path("../shared/data"),
    family: Annotated[
        list[str] | None,
        typer.Option(
            help="fold(s) to run (default: all): figstep, xstest, vlguard, behaviours, "
            "hh-rlhf, mtbench101, mmsafetybench"
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
    seed: Annotated[
        int, typer.Option(help="seed of the draw, the split, the builds and the fit")
    ] = 0,
    harm_layers: HarmLayersOpt = None,
) -> None:
    """Train without each source family in turn and score the family left out.

    Each fold trains and calibrates exactly as `guard train` does, on every other source; a
    one-class family is ranked against the other class of the training sources' test split.
    """
    from safeturn.commands.guard import _callback, _progress, with_harm_layers
    from safeturn.guard.loso import run_loso
    from safeturn.guard.train import ModeratorTrainConfig

    config = ModeratorTrainConfig(data_root=data_root, out=Path("unused.npz"), seed=seed)
    config = with_harm_layers(config, harm_layers)
    with _progress() as bar:
        report = run_loso(config, family or None, progress=_callback(bar))
    console.print(_loso_table(report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {escape(str(json_out))}")


def _loso_table(report: dict[str, Any]) -> Table:
    """One row per left-out family: its size, AUROC, rates at the threshold, the threshold."""
    targets = report["targets"]
    table = Table(
        title=f"leave-one-source-out (targets: AUROC >= {targets['auroc']}, TPR >= "
        f"{targets['tpr_at_threshold']} at <= {targets['fpr']:.0%} benign FPR per source)"
    )
    for column in (
        "left out",
        "dialogues",
        "harmful",
        "benign",
        "AUROC",
        "against",
        "TPR",
        "FPR",
        "TPR@5%FPR",
        "threshold",
    ):
        table.add_column(column, justify="left" if column in ("left out", "against") else "right")
    for name, fold in report["folds"].items():
        if "skipped" in fold:
            table.add_row(name, fold["skipped"])
            continue
        table.add_row(
            name,
            str(fold["dialogues"]),
            str(fold["harmful"]),
            str(fold["benign"]),
            _fmt(fold["auroc"]),
            _AGAINST.get(fold["auroc_against"].split()[0], fold["auroc_against"]),
            _fmt(fold["tpr"]),
            _fmt(fold["fpr"]),
            _fmt(fold["tpr_at_5fpr"]),
            _fmt(fold["threshold"]),
        )
    return table
