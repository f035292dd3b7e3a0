"""`safeturn judge`: list the judges, train the embedded ones (`train`, `train-classifier`).

`score`, `validate` and `refusal-eval` live in `judge_files.py` and `judge_refusal.py`; cli.py
adds them to this group. Errors are reported by the group (`ErrorReportingGroup`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.commands._errors import ErrorReportingGroup

judge_app = typer.Typer(
    name="judge",
    help="Judge replies you have, validate a judge on labelled replies, train the embedded judges.",
    no_args_is_help=True,
    cls=ErrorReportingGroup,
)
console = Console()
err_console = Console(stderr=True)


@judge_app.callback()
def _judge() -> None:
    """Judge replies, validate judges, train the embedded ones."""


_SHOWN = ("accuracy", "precision", "recall", "f1", "roc_auc", "majority_baseline")


@judge_app.command("list")
def list_command() -> None:
    """Every judge and pairwise judge spec, built-in or from a plugin, with an example."""
    from safeturn.commands.plugins import registry_table
    from safeturn.judges.specs import JUDGES, PAIRWISE_JUDGES

    console.print(registry_table(JUDGES, title="judges (--judge)"))
    console.print(registry_table(PAIRWISE_JUDGES, title="pairwise judges (compare --pairwise)"))
    console.print(
        "A judge that asks a model takes any model spec after its name (see `safeturn plugins "
        "--kind backend`); plugins add judges under the entry-point group safeturn.judges."
    )


@judge_app.command("train-classifier")
def train_classifier_command(
    data_dir: Annotated[
        Path, typer.Option(help="folder holding jailbreakbench/ and xstest/")
    ] = Path("../shared/data"),
    out: Annotated[
        Path | None,
        typer.Option(help="head file (.npz; metadata beside it as .json) [default: packaged]"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the train/validation/test split")] = 0,
    max_examples: Annotated[
        int | None, typer.Option(help="train on about this many examples (quick runs)")
    ] = None,
) -> None:
    """Train the `classifier` judge on JailbreakBench and XSTest responses; print test metrics."""
    from safeturn.judges.classifier import DEFAULT_HEAD_PATH
    from safeturn.judges.train_classifier import main

    target = out if out is not None else DEFAULT_HEAD_PATH
    with console.status("embedding and training (minutes on a CPU)..."):
        metrics = main(data_dir, target, seed, max_examples=max_examples)
    table = Table(title=f"classifier head: held-out test split (n = {metrics['n']:.0f})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in _SHOWN:
        table.add_row(name, f"{metrics[name]:.3f}")
    table.add_row("threshold (chosen on validation)", f"{metrics['threshold']:.3f}")
    console.print(table)
    console.print(f"wrote {escape(str(target))} and {escape(str(target.with_suffix('.json')))}")


@judge_app.command("train")
def train_reply_judge_command(
    data_dir: Annotated[
        Path, typer.Option(help="the shared data folder (jailbreakbench/, xstest/, ...)")
    ] = Path("../shared/data"),
    out: Annotated[
        Path | None,
        typer.Option(help="weights (.safetensors; metadata beside it) [default: packaged]"),
    ] = None,
    card: Annotated[
        Path | None,
        typer.Option(help="validation card to write [default: packaged card of classifier-v2]"),
    ] = None,
    loso: Annotated[
        str,
        typer.Option(help="families to hold out one at a time ('' skips the folds)"),
    ] = ",".join(("jailbreakbench", "xstest", "hh-rlhf", "mtbench101", "vlguard", "siuo")),
    epochs: Annotated[int, typer.Option(help="passes over the training split")] = 2,
    tuned_layers: Annotated[
        int, typer.Option(help="top encoder layers fine-tuned (6 = the whole encoder)")
    ] = 1,
    seed: Annotated[int, typer.Option(help="seeds the splits, hard cases and training")] = 0,
    threshold_rule: Annotated[
        str,
        typer.Option(
            help="max-kappa (pooled validation κ) or benign-sources (≤ --false-unsafe of each "
            "source's safe validation replies called unsafe); folds report both"
        ),
    ] = "benign-sources",
    false_unsafe: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="benign-sources: share of each source's safe validation requests that may be "
            "called unsafe",
        ),
    ] = 0.10,
) -> None:
    """Train the `classifier-v2` judge and report it leave-one-source-out (~30 min, 2 cores)."""
    from safeturn.judges.cross_encoder import DEFAULT_WEIGHTS
    from safeturn.judges.judge_card import DEFAULT_CARD, fold_rows
    from safeturn.judges.train_judge import THRESHOLD_RULES, JudgeTrainConfig, main

    if threshold_rule not in THRESHOLD_RULES:
        raise typer.BadParameter(
            f"must be one of {', '.join(THRESHOLD_RULES)}; got {threshold_rule!r}",
            param_hint="--threshold-rule",
        )
    families = tuple(f.strip() for f in loso.split(",") if f.strip())
    config = JudgeTrainConfig(
        epochs=epochs,
        tuned_layers=tuned_layers,
        seed=seed,
        threshold_rule=threshold_rule,
        false_unsafe=false_unsafe,
    )
    target = out if out is not None else DEFAULT_WEIGHTS
    card_path = card if card is not None else DEFAULT_CARD
    metadata = main(
        data_dir, target, config, loso=families, card_path=card_path, log=err_console.print
    )
    table = Table(title="classifier-v2, each family held out of training")
    for column in ("held out", "n", "κ", "AUC", "false-unsafe", "note"):
        table.add_column(column)
    for row in fold_rows(metadata["leave_one_source_out"]):
        table.add_row(*row)
    console.print(table)
    console.print(f"wrote {escape(str(target))} and {escape(str(card_path))}")


@judge_app.command("export-labelled")
def export_labelled_command(
    out: Annotated[Path, typer.Option(help="folder for one <family>.jsonl per source")],
    data_dir: Annotated[Path, typer.Option(help="the shared data folder")] = Path("../shared/data"),
) -> None:
    """Write the labelled replies the embedded judge is measured on, for `judge validate`."""
    from safeturn.judges.export_labelled import export_labelled

    written = export_labelled(data_dir, out)
    for family, count in written.items():
        console.print(f"{escape(str(out / (family + '.jsonl')))}: {count} labelled replies")
