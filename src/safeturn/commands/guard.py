"""`safeturn guard`: train and evaluate the dialogue moderator (`serve` is registered by cli.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from safeturn.errors import SafeturnError

guard_app = typer.Typer(
    name="guard",
    help="Defend: train, evaluate and serve the multi-turn dialogue moderator.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

_DATA_ROOT = Path("../shared/data")
_METHODS = ("moderator", "single-message", "last-message", "keyword")


@guard_app.callback()
def _guard() -> None:
    """Train, evaluate and serve the dialogue moderator."""


def _fail(exc: Exception) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(code=1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def _callback(bar: Progress) -> Any:
    tasks: dict[str, Any] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks:
            label = "OCR of images" if what == "images" else "embedding texts"
            tasks[what] = bar.add_task(label, total=total)
        bar.update(tasks[what], completed=done, total=total)

    return update


@guard_app.command("train")
def train_command(
    data_root: Annotated[
        Path, typer.Option(help="folder holding figstep/, xstest/, harmbench/, ... (read only)")
    ] = _DATA_ROOT,
    out: Annotated[
        Path | None,
        typer.Option(help="model file (.npz; metadata beside it as .json) [default: packaged]"),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="seed of the draw, the split, the builds and the fit")
    ] = 0,
    image_fraction: Annotated[
        float, typer.Option(help="share of text-only seeds that also get the image strategies")
    ] = 0.2,
    max_per_source: Annotated[
        int | None, typer.Option(help="cap every source at this many seeds (quick runs)")
    ] = None,
) -> None:
    """Build harmful and benign dialogues from the seed sets, train, calibrate and save."""
    from safeturn.guard.dataset import DEFAULT_CAPS
    from safeturn.guard.model import DEFAULT_MODEL_PATH
    from safeturn.guard.train import TrainConfig, train

    caps = dict(DEFAULT_CAPS)
    if max_per_source is not None:
        caps = {k: min(v, max_per_source) for k, v in caps.items()}
    target = out if out is not None else DEFAULT_MODEL_PATH
    start = time.perf_counter()
    try:
        config = TrainConfig(
            data_root=data_root, out=target, seed=seed, caps=caps, image_fraction=image_fraction
        )
        with _progress() as bar:
            model = train(config, progress=_callback(bar))
    except (SafeturnError, ValueError) as exc:
        raise _fail(exc) from exc
    meta = model.metadata
    data = meta["data"]
    table = Table(title="training data (dialogues; split by seed)")
    for column in ("split", "seeds", "dialogues", "harmful", "benign", "prefixes"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in ("train", "validation", "test"):
        row = data[split]
        table.add_row(
            split,
            *(str(row.get(k, 0)) for k in ("seeds", "dialogues", "harmful", "benign", "prefixes")),
        )
    console.print(table)
    _print_methods(meta["test"], title="held-out test seeds")
    console.print(
        f"threshold {model.threshold:.3f} (validation, <= 5 % benign flagged); LLM band "
        f"[{model.band[0]:.3f}, {model.band[1]:.3f}]; {meta['images_analyzed']} images OCR'd, "
        f"{meta['texts_embedded']} texts embedded; {time.perf_counter() - start:.0f} s"
    )
    console.print(f"wrote {escape(str(target))} and {escape(str(target.with_suffix('.json')))}")


@guard_app.command("eval")
def eval_command(
    data_root: Annotated[
        Path, typer.Option(help="folder holding figstep/, xstest/, harmbench/, ... (read only)")
    ] = _DATA_ROOT,
    model: Annotated[
        Path | None, typer.Option(help="moderator model .npz [default: packaged]")
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON report")] = Path("runs/guard/eval.json"),
    nudity: Annotated[bool, typer.Option(help="run the NudeNet signal, as deployed")] = True,
) -> None:
    """Evaluate the moderator on its held-out seeds beside a single-message guard and keywords."""
    from safeturn.guard.evaluate import evaluate
    from safeturn.guard.model import DEFAULT_MODEL_PATH

    path = model if model is not None else DEFAULT_MODEL_PATH
    try:
        with _progress() as bar:
            report = evaluate(data_root, path, out=out, nudity=nudity, progress=_callback(bar))
    except SafeturnError as exc:
        raise _fail(exc) from exc
    n = report["n"]
    _print_methods(
        report,
        title=f"held-out test seeds: {n['dialogues']} dialogues ({n['harmful']} harmful, "
        f"{n['benign']} benign) from {n['seeds']} seeds",
    )
    _print_strategies(report)
    console.print(f"wrote {escape(str(out))}")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _print_methods(report: dict[str, Any], *, title: str) -> None:
    table = Table(title=title)
    columns = (
        "method",
        "AUROC",
        "TPR@5%FPR",
        "TPR",
        "FPR",
        "before last turn @5%FPR",
        "turns early @5%FPR",
        "category acc",
        "strategy acc",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for name in _METHODS:
        m = report["methods"].get(name)
        if m is None:
            continue
        early = m["earliest_at_5fpr"]
        table.add_row(
            name,
            _fmt(m["auroc"]),
            _fmt(m["tpr_at_5fpr"]),
            _fmt(m["tpr"]),
            _fmt(m["fpr"]),
            _fmt(early["flagged_before_final_turn"]),
            _fmt(early["mean_turns_before_final"], 2),
            _fmt(m["category_accuracy"]),
            _fmt(m["strategy_accuracy"]),
        )
    console.print(table)


def _print_strategies(report: dict[str, Any]) -> None:
    table = Table(title="by strategy: AUROC (TPR / FPR at the operating threshold)")
    table.add_column("strategy")
    table.add_column("n", justify="right")
    shown = ("moderator", "single-message", "keyword")
    for name in shown:
        table.add_column(name, justify="right")
    for strategy, row in report["by_strategy"].items():
        cells = [
            f"{_fmt(row[m]['auroc'])} ({_fmt(row[m]['tpr'], 2)} / {_fmt(row[m]['fpr'], 2)})"
            for m in shown
        ]
        table.add_row(strategy, str(row["n"]), *cells)
    console.print(table)
