"""Running a stored run with progress bars, then printing and writing its reports."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from safeturn.judges.card import JudgeCard, unmatched_cards
from safeturn.schema import Sample

if TYPE_CHECKING:  # the engine, the store and the reports load when a run or report needs them
    from safeturn.run.engine import SampleDone
    from safeturn.run.results import RunResults
    from safeturn.run.store import RunStore

console = Console()

JudgeCardOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--judge-card",
        metavar="FILE",
        help="a judge's validation card (the JSON of `safeturn judge validate --json`), "
        "shown beside the rates that judge decided; repeatable, one per judge",
    ),
]

TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0.001,
        help="seconds per attempt of each call to an OpenAI-compatible model server (eval: "
        "the target's and the judges')  [default: 120]",
        show_default=False,
    ),
]
RetriesOption = Annotated[
    int | None,
    typer.Option(
        "--retries",
        min=0,
        help="retries of a call to an OpenAI-compatible server after a timeout, 429 or 5xx  "
        "[default: 5]",
        show_default=False,
    ),
]


class Network(NamedTuple):
    """Per-call limits for OpenAI-compatible servers; None keeps the backend's default.

    Not stored with the run: a resume may need other limits than the start did.
    """

    timeout_s: float | None = None
    max_retries: int | None = None


BACKEND_DEFAULTS = Network()


class SpeedColumn(ProgressColumn):
    """Dialogues finished per second (rich's own speed columns speak of bytes)."""

    def render(self, task: Task) -> Text:
        """The task's recent speed, or `?` before the first sample finishes."""
        speed = task.finished_speed or task.speed
        return Text("? /s" if speed is None else f"{speed:.2f}/s", style="progress.data.speed")


def progress_columns() -> tuple[ProgressColumn, ...]:
    """Description (with the unsafe count so far), bar, done/total, speed, elapsed, ETA."""
    return (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        SpeedColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


def execute_and_publish(
    store: RunStore,
    run_id: str,
    html: Path,
    cards: Sequence[JudgeCard] = (),
    network: Network = BACKEND_DEFAULTS,
    *,
    worker: bool = False,
) -> RunResults | None:
    """Run (or resume) a run, then print its summary and write its reports.

    As one of several `worker`s, only the worker that finishes the run writes the reports;
    the others return None.
    """
    if not execute(store, run_id, network, worker=worker):
        console.print(
            f"run {run_id}: another worker finished it and writes its report "
            f"(or: safeturn report {run_id})"
        )
        return None
    from safeturn.run.engine import bulk_objects
    from safeturn.run.results import load_results

    with bulk_objects():
        results = load_results(store, run_id)
        publish(results, html, cards)
    return results


def execute(
    store: RunStore, run_id: str, network: Network = BACKEND_DEFAULTS, *, worker: bool = False
) -> bool:
    """Run the unfinished samples of a run with a progress bar, loading its model and judges.

    `network` bounds each call to an OpenAI-compatible server, the target's and the judges'.
    The run's lease is taken first, so a second process resuming the same run stops (with
    `RunBusyError`) before it loads a model. A `worker` shares the run with other workers
    instead (`safeturn.run.claims`). Returns whether this process finished the run.
    """
    from safeturn.run.lease import RunLease

    if worker:
        return _execute_held(store, run_id, network, worker=True)
    with RunLease(store, run_id):
        return _execute_held(store, run_id, network, worker=False)


def _execute_held(store: RunStore, run_id: str, network: Network, *, worker: bool) -> bool:
    from safeturn.run.engine import execute_run, execute_worker, run_settings, unfinished_samples
    from safeturn.run.members import run_members

    settings = run_settings(store, run_id)
    status = store.sample_status(run_id)
    todo = len(unfinished_samples(store, run_id))
    draws = f" ({settings.samples} draws per item)" if settings.samples > 1 else ""
    console.print(
        f"run {run_id}: {todo} of {len(status)} samples to do with {settings.model}{draws}"
    )
    started = time.perf_counter()
    running = started
    tally = {"unsafe": 0, "judged": 0, "failed": 0}
    with Progress(*progress_columns(), console=console, disable=not sys.stdout.isatty()) as bar:
        task = bar.add_task("dialogues", total=todo)

        def advance(sample: Sample, done: SampleDone) -> None:
            if done.error is not None:
                tally["failed"] += 1
                bar.console.print(f"[yellow]sample {sample.id} failed:[/yellow] {done.error}")
            elif sample.harmful is True and done.final_verdicts:
                label = done.final_verdicts[0].label  # the headline judge's
                if label != "invalid":
                    tally["judged"] += 1
                    tally["unsafe"] += label == "unsafe"
            bar.update(task, advance=1, description=f"dialogues{_tally_text(tally)}")

        async def go() -> bool:
            nonlocal running
            async with run_members(settings, **network._asdict()) as (model, judges):
                running = time.perf_counter()
                if worker:
                    return await execute_worker(store, run_id, model, judges, on_sample=advance)
                await execute_run(store, run_id, model, judges, on_sample=advance)
                return True

        finished_here = asyncio.run(go())
    elapsed, busy = time.perf_counter() - started, time.perf_counter() - running
    speed = f" ({todo / busy:.2f} dialogues/s after loading)" if todo and busy > 0 else ""
    console.print(f"done in {elapsed:.1f} s{speed}{_tally_text(tally)}")
    return finished_here


def _tally_text(tally: dict[str, int]) -> str:
    """` · unsafe 3/10 (30%)`: the running ASR of the headline judge (final turn), failures."""
    text = ""
    if tally["judged"]:
        share = tally["unsafe"] / tally["judged"]
        text += f" · unsafe {tally['unsafe']}/{tally['judged']} ({share:.0%})"
    if tally["failed"]:
        text += f" · [yellow]{tally['failed']} failed[/yellow]"
    return text


def publish(results: RunResults, html: Path, cards: Sequence[JudgeCard] = ()) -> None:
    """Print the summary table; write the HTML report and its JSON summary beside it.

    `cards` are the validation cards the user gave (`--judge-card`); the headline judge's is
    shown beside the ASR, and a card for another judge is reported as not shown.
    """
    from safeturn.report.html import write_html
    from safeturn.report.terminal import print_summary, write_summary_json

    for warning in unmatched_cards(cards, [results.judge]):
        console.print(f"warning: {warning}", style="yellow", markup=False)
    print_summary(results, console, cards)
    write_html(results, html, cards)
    summary = write_summary_json(results, html.with_suffix(".json"), cards)
    console.print(f"report: {html}\nsummary: {summary}\nrun id: {results.run_id}")
