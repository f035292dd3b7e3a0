"""The `safeturn` command line: thin wrappers that build config objects and call the library."""

from __future__ import annotations

import asyncio
import atexit
import functools
import gc
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.commands._errors import ErrorReportingGroup
from safeturn.commands._lazy import LazyCommand, LazyGroup, Loader
from safeturn.commands._running import (
    JudgeCardOption,
    RetriesOption,
    TimeoutOption,
    execute_and_publish,
    publish,
)
from safeturn.errors import SafeturnError
from safeturn.judges.card import load_cards, unmatched_cards
from safeturn.models import BACKENDS, ChatModel, load_model
from safeturn.models.spec import check_model_spec
from safeturn.redact import redact_url_credentials
from safeturn.schema import Dialogue, GenerateParams, ImagePart, Message, Sample, read_jsonl

if TYPE_CHECKING:  # the run database and reports are imported by the commands that use them
    from safeturn.report.compare import PairwiseReport
    from safeturn.run.results import RunResults
    from safeturn.run.store import RunStore


class _Commands(LazyGroup, ErrorReportingGroup):
    """`safeturn`'s sub-commands, imported when used (`_lazy`); errors reported once (`_errors`)."""

    lazy: ClassVar[dict[str, LazyCommand]] = {}  # filled at the end of this module


app = typer.Typer(
    name="safeturn",
    help="Measure, defend and align vision-language models in multi-turn, multimodal dialogues.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Commands,
)
console = Console()

# The interpreter's last collections walk every object still alive before the process frees
# them all anyway; frozen, they are skipped (0.3 s of the exit after a 1,000-dialogue eval).
atexit.register(gc.freeze)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _open_store(db: str) -> RunStore:
    """The run database (a str, not a Path: a Path would turn `postgresql://` into `:/`)."""
    from safeturn.run.store import RunStore

    return RunStore(db)  # no driver, a server that cannot be reached: a SafeturnError


@app.command()
def models() -> None:
    """List the model backends and the embedded default model."""
    from safeturn.models.embedded import EMBEDDED_MODEL_ID, find_embedded_gguf

    table = Table(title="model backends (select one with a spec string)")
    table.add_column("backend")
    table.add_column("example spec")
    table.add_column("what it is")
    for entry in BACKENDS.entries():  # generated: a backend added in one file shows here
        table.add_row(escape(entry.name), escape(entry.example), escape(entry.summary))
    console.print(table)
    try:
        where = str(find_embedded_gguf())
    except SafeturnError as exc:
        where = f"not installed ({exc})"
    console.print(f"embedded model: {EMBEDDED_MODEL_ID}\n  weights: {where}", soft_wrap=True)


@app.command()
def chat(
    spec: Annotated[str, typer.Argument(help="model spec, e.g. embedded or openai:URL#model")],
    image: Annotated[
        list[Path] | None, typer.Option("--image", "-i", help="image for the first turn")
    ] = None,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="one message, then exit")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="answer every dialogue in a JSONL file")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens per reply")] = 256,
    temperature: Annotated[float, typer.Option()] = 0.0,
    timeout: TimeoutOption = None,
    retries: RetriesOption = None,
) -> None:
    """Talk to a model: interactively, one message, or every dialogue of a JSONL file."""
    params = GenerateParams(max_tokens=max_tokens, temperature=temperature)
    model = load_model(spec, timeout_s=timeout, max_retries=retries)
    if file is not None:
        asyncio.run(_answer_file(model, read_jsonl(file), params))
        return
    images = [ImagePart(path=str(p.resolve())) for p in image or []]
    for given, picture in zip(image or [], images, strict=True):
        picture.load(label=f"--image {given}")
    asyncio.run(_chat_loop(model, images, message, params))


async def _answer_file(model: ChatModel, samples: Iterable[Sample], params: GenerateParams) -> None:
    try:
        for sample in samples:
            reply = await model.generate(sample.dialogue, params)
            console.rule(f"{sample.id} ({sample.turns} turns)")
            console.print(reply.text)
    finally:
        await model.aclose()


async def _chat_loop(
    model: ChatModel, images: list[ImagePart], message: str | None, params: GenerateParams
) -> None:
    dialogue = Dialogue()
    pending_images = images
    try:
        while True:
            if message is not None:
                text = message
            else:
                try:
                    text = console.input("[bold]you>[/bold] ")
                except EOFError:
                    break
                if not text.strip():
                    break
            dialogue = dialogue.with_message(Message.user(text, images=pending_images))
            pending_images = []
            reply = await model.generate(dialogue, params)
            dialogue = dialogue.with_message(Message.assistant(reply.text))
            console.print(f"[bold cyan]{model.name}>[/bold cyan] {reply.text}")
            if reply.bridge is not None:
                console.print(f"[dim](images read via {reply.bridge.method})[/dim]")
            if message is not None:
                break
    finally:
        await model.aclose()


DEMO_STRATEGIES = ("typography", "image-grounding")
DEMO_JUDGES = ("classifier-v2", "refusal")
DEMO_TURNS = (1, 2, 4)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for the database, images and report")] = Path(
        "runs/demo"
    ),
    model_spec: Annotated[str, typer.Option("--model", help="model spec")] = "embedded",
    limit: Annotated[int | None, typer.Option(help="use the first N seeds (of 20)")] = 5,
    judge: Annotated[
        list[str] | None, typer.Option("--judge", "-j", help="judge specs; the first is headline")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens per reply")] = 48,
    concurrency: Annotated[int, typer.Option(help="dialogues in flight (batch size)")] = 8,
    resume: Annotated[str | None, typer.Option(help="continue this run id")] = None,
) -> None:
    """Evaluate a model on the bundled FigStep seeds and benign twins at 1, 2 and 4 turns."""
    from safeturn.attacks import build_attacks_sync
    from safeturn.demo import demo_seeds
    from safeturn.run.engine import EvalSettings, start_run
    from safeturn.run.store import RunStore

    store = RunStore(out / "safeturn.db")
    try:
        if resume is None:
            check_model_spec(model_spec)  # before the run exists: no run stuck in "running"
            samples = build_attacks_sync(
                demo_seeds(limit=limit),
                list(DEMO_STRATEGIES),
                list(DEMO_TURNS),
                seed=0,
                images_dir=out / "images",
            )
            settings = EvalSettings(
                model=model_spec,
                judges=judge or list(DEMO_JUDGES),
                mode="live",
                params=GenerateParams(max_tokens=max_tokens),
                concurrency=concurrency,
                data=(
                    f"figstep-demo: {limit or 20} FigStep SafeBench-Tiny seeds + benign twins → "
                    f"{', '.join(DEMO_STRATEGIES)} × turns {', '.join(map(str, DEMO_TURNS))}"
                ),
            )
            run_id = start_run(store, samples, settings)
        else:
            run_id = resume
        execute_and_publish(store, run_id, out / "report.html")
    finally:
        store.close()


@app.command()
def runs(
    db: Annotated[str, typer.Option(help="run database file or SQLAlchemy URL")] = (
        "runs/demo/safeturn.db"
    ),
) -> None:
    """List the runs in a database."""
    store = _open_store(db)
    table = Table(title=escape(f"runs in {redact_url_credentials(store.url)}"))
    for column in ("id", "kind", "status", "created", "model", "samples"):
        table.add_column(column)
    for row in store.list_runs():
        table.add_row(
            row.id,
            row.kind,
            row.status,
            row.created_at.strftime("%Y-%m-%d %H:%M"),
            str(row.config.get("model", "")),
            str(len(store.sample_status(row.id))),
        )
    store.close()
    console.print(table)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="run id")],
    db: Annotated[str, typer.Option(help="run database file or SQLAlchemy URL")] = (
        "runs/demo/safeturn.db"
    ),
    out: Annotated[Path | None, typer.Option(help="HTML file to write")] = None,
    csv: Annotated[Path | None, typer.Option(help="also write one CSV row per sample")] = None,
    judge_card: JudgeCardOption = None,
) -> None:
    """Print a run's summary and write its HTML report (and JSON; CSV on request)."""
    from safeturn.run.results import load_results

    store = _open_store(db)
    try:
        cards = load_cards(judge_card or [])
        results = load_results(store, run_id)
    finally:
        store.close()
    publish(results, out or Path(f"runs/report-{run_id}.html"), cards)
    if csv is not None:
        from safeturn.report.export import write_csv

        console.print(f"csv: {write_csv(results, csv)}")


@app.command()
def compare(
    run_ids: Annotated[list[str], typer.Argument(help="two or more run ids")],
    db: Annotated[str, typer.Option(help="run database file or SQLAlchemy URL")] = (
        "runs/eval/safeturn.db"
    ),
    pairwise: Annotated[
        str | None,
        typer.Option(
            help="pairwise judge (see `safeturn judge list`, e.g. classifier, pairwise:MODEL): "
            "win rate of "
            "the first run against the second, matched by sample id"
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="JSON file for the pairwise verdicts and win rate")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="pairwise judgements in flight")] = 8,
    judge_card: JudgeCardOption = None,
) -> None:
    """Compare runs side by side (ASR, over-refusal, Safety Index); --pairwise: A's win rate."""
    from safeturn.report.compare import print_pairwise, write_pairwise_json
    from safeturn.report.export import print_comparison
    from safeturn.run.results import load_results

    if len(run_ids) < 2:
        raise typer.BadParameter("give at least two run ids")
    if pairwise is not None and len(run_ids) != 2:
        raise typer.BadParameter("--pairwise compares exactly two runs: A (first) and B")
    store = _open_store(db)
    try:
        cards = load_cards(judge_card or [])
        runs = [load_results(store, run_id) for run_id in run_ids]
    finally:
        store.close()
    for warning in unmatched_cards(cards, [r.judge for r in runs]):
        console.print(f"warning: {warning}", style="yellow", markup=False)
    print_comparison(runs, console, cards)
    if pairwise is not None:
        report = _pairwise(runs[0], runs[1], pairwise, concurrency)
        print_pairwise(report, console)
        path = out or Path("runs") / f"pairwise-{run_ids[0]}-vs-{run_ids[1]}.json"
        console.print(f"pairwise verdicts: {write_pairwise_json(report, path)}")


def _pairwise(a: RunResults, b: RunResults, spec: str, concurrency: int) -> PairwiseReport:
    """Judge every matched sample of A and B with the pairwise judge `spec`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from safeturn.report.pairwise_judging import judge_runs_pairwise

    columns = (TextColumn("pairwise"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("pairwise", total=None)
        return judge_runs_pairwise(
            a,
            b,
            spec,
            concurrency=concurrency,
            on_start=lambda total: progress.update(task, total=total),
            on_done=lambda _verdict: progress.advance(task),
        )


def _lazy(name: str, help: str | None = None) -> Callable[[Loader], Loader]:
    """Register a loader of a sub-command (imports its module once, when the command is used)."""

    def register(load: Loader) -> Loader:
        loader = functools.cache(load)
        _Commands.lazy[name] = LazyCommand(loader, help)
        return loader

    return register


@_lazy("eval")
def _eval() -> Callable[..., None]:
    from safeturn.commands.eval import eval_command

    return eval_command


@_lazy("build")
def _build() -> Callable[..., None]:
    from safeturn.commands.build import build_command

    return build_command


@_lazy("loop")
def _loop() -> Callable[..., None]:
    from safeturn.commands.loop import loop_command

    return loop_command


@_lazy("data", help="List, inspect and export benchmark datasets.")
def _data() -> typer.Typer:
    from safeturn.commands.data import data_app

    return data_app


@_lazy("judge", help="Judge replies you have, validate judges, train the embedded ones.")
def _judge() -> typer.Typer:
    from safeturn.commands.judge import judge_app
    from safeturn.commands.judge_files import score_command, validate_command
    from safeturn.commands.judge_refusal import refusal_eval_command

    judge_app.command("score")(score_command)
    judge_app.command("validate")(validate_command)
    judge_app.command("refusal-eval")(refusal_eval_command)
    return judge_app


@_lazy("guard")
def _guard() -> typer.Typer:
    from safeturn.commands.guard import guard_app
    from safeturn.commands.guard_loso import loso_command
    from safeturn.commands.guard_serve import serve_command

    guard_app.command("serve")(serve_command)
    guard_app.command("loso")(loso_command)
    return guard_app


@_lazy("train")
def _train() -> typer.Typer:
    from safeturn.commands.train import train_app

    return train_app


@_lazy("plugins")
def _plugins() -> Callable[..., None]:
    from safeturn.commands.plugins import plugins_command

    return plugins_command


@_lazy("synth")
def _synth() -> typer.Typer:
    from safeturn.commands.synth import synth_app

    return synth_app


if __name__ == "__main__":
    app()
