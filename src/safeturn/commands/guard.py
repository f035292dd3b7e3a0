"""`safeturn guard`: train and evaluate the dialogue moderator (`serve` is registered by cli.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from safeturn.commands._errors import ErrorReportingGroup
from safeturn.errors import ConfigError

if TYPE_CHECKING:
    from safeturn.data.labelled import SkippedLine
    from safeturn.guard.train_config import ModeratorTrainConfig

guard_app = typer.Typer(
    name="guard",
    help="Defend: train, evaluate and serve the multi-turn dialogue moderator.",
    no_args_is_help=True,
    cls=ErrorReportingGroup,
)
console = Console()
err_console = Console(stderr=True)

_DATA_ROOT = Path("../shared/data")
_EVAL_OUT = Path("runs/guard/eval.json")
_METHODS = ("moderator", "single-message", "last-message", "keyword")
_SKIPPED_SHOWN = 20


@guard_app.callback()
def _guard() -> None:
    """Train, evaluate and serve the dialogue moderator."""


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


HarmLayersOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=6,
        help="MiniLM layers the harm reader fine-tunes (0: none, the harm scorer reads frozen "
        "embeddings; quicker, weaker on unseen sources) [default: the training config's]",
    ),
]


def with_harm_layers(config: ModeratorTrainConfig, harm_layers: int | None) -> ModeratorTrainConfig:
    """`config` with the harm reader's depth that `--harm-layers` asks for, if it was given."""
    if harm_layers is None:
        return config
    return dataclasses.replace(config, harm_tuned_layers=harm_layers)


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
        float,
        typer.Option(
            min=0.0, max=1.0, help="share of text-only seeds that also get the image strategies"
        ),
    ] = 0.2,
    max_per_source: Annotated[
        int | None, typer.Option(min=1, help="cap every source at this many seeds (quick runs)")
    ] = None,
    harm_layers: HarmLayersOpt = None,
) -> None:
    """Build harmful and benign dialogues from the seed sets, train, calibrate and save."""
    from safeturn.guard.dataset import DEFAULT_CAPS
    from safeturn.guard.model import DEFAULT_MODEL_PATH, harm_path
    from safeturn.guard.train import ModeratorTrainConfig, train

    caps = dict(DEFAULT_CAPS)
    if max_per_source is not None:
        caps = {k: min(v, max_per_source) for k, v in caps.items()}
    target = out if out is not None else DEFAULT_MODEL_PATH
    start = time.perf_counter()
    config = ModeratorTrainConfig(
        data_root=data_root, out=target, seed=seed, caps=caps, image_fraction=image_fraction
    )
    config = with_harm_layers(config, harm_layers)
    with _progress() as bar:
        model = train(config, progress=_callback(bar))
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
    written = [target, target.with_suffix(".json")]
    if model.harm is not None:
        written.append(harm_path(target))
    console.print(f"wrote {', '.join(escape(str(p)) for p in written)}")


EvalDataOpt = Annotated[
    Path | None,
    typer.Option(
        help="labelled JSONL file to score, one conversation a line: OpenAI `messages` "
        "ending with the user turn, `harmful` true/false, optional `id` and `source` "
        "(or safeturn Sample lines); instead of --data-root"
    ),
]
EvalDataRootOpt = Annotated[
    Path | None,
    typer.Option(
        help="folder holding figstep/, xstest/, harmbench/, ...: rebuild the model's "
        "held-out test seeds and score those; the mode used without --data "
        "(default: ../shared/data)"
    ),
]
ModelOpt = Annotated[
    Path | None, typer.Option(help="moderator model .npz (default: the packaged one)")
]
EvalOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--json",
        "--out",
        help="JSON report (default: runs/guard/eval.json with --data-root; none with --data)",
    ),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="flag at this risk instead of the model's threshold (keywords: one hit)",
    ),
]
ImageRootOpt = Annotated[
    Path | None,
    typer.Option(
        help="with --data: relative image paths are read from, and must stay in, this "
        "folder (default: the file's folder)"
    ),
]
EvalLimitOpt = Annotated[
    int | None, typer.Option(min=1, help="with --data: read only the first N non-blank lines")
]
NudityOpt = Annotated[bool, typer.Option(help="run the NudeNet signal, as deployed")]


@guard_app.command("eval")
def eval_command(
    data: EvalDataOpt = None,
    data_root: EvalDataRootOpt = None,
    model: ModelOpt = None,
    out: EvalOutOpt = None,
    threshold: ThresholdOpt = None,
    image_root: ImageRootOpt = None,
    limit: EvalLimitOpt = None,
    nudity: NudityOpt = True,
) -> None:
    """Evaluate the moderator beside single-message, last-message and keyword guards.

    `--data FILE` scores any labelled conversations; `--data-root DIR` (the default) rebuilds
    and scores the held-out test seeds of the model's own training plan.
    """
    from safeturn.guard.model import DEFAULT_MODEL_PATH

    path = model if model is not None else DEFAULT_MODEL_PATH
    if data is not None and data_root is not None:
        raise ConfigError("give --data FILE or --data-root DIR, not both")
    if data is not None:
        _eval_file(data, path, out, threshold, image_root, limit, nudity)
        return
    if image_root is not None or limit is not None:
        raise ConfigError("--image-root and --limit apply to --data FILE only")
    _eval_seeds(data_root or _DATA_ROOT, path, out or _EVAL_OUT, threshold, nudity)


def _eval_seeds(
    data_root: Path, model: Path, out: Path, threshold: float | None, nudity: bool
) -> None:
    from safeturn.guard.evaluate import evaluate

    with _progress() as bar:
        report = evaluate(
            data_root, model, out=out, nudity=nudity, threshold=threshold, progress=_callback(bar)
        )
    n = report["n"]
    _print_methods(
        report,
        title=f"held-out test seeds: {n['dialogues']} dialogues ({n['harmful']} harmful, "
        f"{n['benign']} benign) from {n['seeds']} seeds",
    )
    _print_strategies(report)
    console.print(f"wrote {escape(str(out))}")


def _eval_file(
    data: Path,
    model: Path,
    out: Path | None,
    threshold: float | None,
    image_root: Path | None,
    limit: int | None,
    nudity: bool,
) -> None:
    from safeturn.data.labelled import read_labelled
    from safeturn.guard.eval_file import evaluate_file

    labelled = read_labelled(data, image_root=image_root, limit=limit)
    _print_skipped(labelled.skipped)
    with _progress() as bar:
        report = evaluate_file(
            labelled, model, out=out, nudity=nudity, threshold=threshold, progress=_callback(bar)
        )
    print_file_report(report)
    if out is not None:
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


def _print_skipped(skipped: Sequence[SkippedLine]) -> None:
    for line in skipped[:_SKIPPED_SHOWN]:
        err_console.print(
            f"[yellow]skipped[/yellow] line {line.line}: {escape(line.error)}", soft_wrap=True
        )
    if len(skipped) > _SKIPPED_SHOWN:
        err_console.print(f"... and {len(skipped) - _SKIPPED_SHOWN} more skipped lines")


def _ci(value: Any, bounds: Any) -> str:
    if value is None:
        return "-"
    if bounds is None:
        return _fmt(value)
    return f"{_fmt(value)} ({bounds[0]:.2f}-{bounds[1]:.2f})"


def _earliest(block: dict[str, Any]) -> str:
    mean = block["earliest_turn"]["mean"]
    return "-" if mean is None else f"{mean:.2f}"


def print_file_report(report: dict[str, Any]) -> None:
    """The `--data FILE` report as two tables: every method overall, then per source.

    Intervals of the rates, the earliest-turn distributions and the 5 % FPR thresholds are in
    the JSON report; the tables keep to what fits a terminal.
    """
    n = report["n"]
    methods = {"moderator": report["moderator"], **report["baselines"]}
    table = Table(
        title=f"{escape(Path(report['data']).name)}: {n['conversations']} conversations "
        f"({n['harmful']} harmful, {n['benign']} benign; {n['multi_turn_harmful']} harmful "
        f"multi-turn), {n['skipped']} lines skipped; threshold {report['threshold']:.3f}"
    )
    table.add_column("method", no_wrap=True)
    table.add_column("AUROC (95 % CI)", justify="right", no_wrap=True)
    for column in ("TPR", "FPR", "TPR at\n5% FPR", "before\nlast turn", "mean\nfirst\nturn"):
        table.add_column(column, justify="right")
    for name, m in methods.items():
        table.add_row(
            name,
            _ci(m["auroc"], m["auroc_ci"]),
            _fmt(m["tpr"]),
            _fmt(m["fpr"]),
            _fmt(m["tpr_at_5fpr"]),
            _fmt(m["flagged_before_last_turn"]),
            _earliest(m),
        )
    console.print(table)
    by_source = Table(
        title="by source, n (harmful/benign) under its name (*: one class here, AUROC against "
        "the other class of the whole file; cut: the overall 5 % FPR threshold)"
    )
    by_source.add_column("source", no_wrap=True)
    by_source.add_column("method", no_wrap=True)
    for column in ("AUROC", "TPR / FPR", "TPR / FPR\nat cut", "before\nlast turn"):
        by_source.add_column(column, justify="right")
    for source, block in report["by_source"].items():
        counts = block["n"]
        label = [
            escape(source),
            f"{counts['conversations']} ({counts['harmful']}/{counts['benign']})",
        ]
        shown = [name for name in _METHODS if name in block]
        for i, name in enumerate(shown):
            m = block[name]
            auroc = (
                _fmt(m["auroc"], 2) if m["auroc"] is not None else f"{_fmt(m['auroc_vs_rest'], 2)}*"
            )
            by_source.add_row(
                label[i] if i < len(label) else "",
                name,
                auroc,
                f"{_fmt(m['tpr'], 2)} / {_fmt(m['fpr'], 2)}",
                f"{_fmt(m['tpr_at_overall_5fpr'], 2)} / {_fmt(m['fpr_at_overall_5fpr'], 2)}",
                _fmt(m["flagged_before_last_turn"], 2),
                end_section=i == len(shown) - 1,
            )
    console.print(by_source)
