"""`safeturn loop`: eval → failures → training data → train → re-eval held out → before/after."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from safeturn.commands._running import progress_columns
from safeturn.commands._train_options import SetOpt
from safeturn.train.loop import STEPS, LoopEvents, RunName, StepName, run_loop
from safeturn.train.loop_config import LoopConfig

if TYPE_CHECKING:
    from safeturn.report.compare import BeforeAfter
    from safeturn.run.engine import SampleCallback, SampleDone
    from safeturn.schema import Sample

console = Console()


class _ConsoleEvents(LoopEvents):
    """Step lines, one progress bar per eval run, and the before/after table."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: Any = None
        self._started = time.perf_counter()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def step(self, name: StepName, message: str) -> None:
        """Print where the loop is, with the wall time so far."""
        self._stop()
        elapsed = time.perf_counter() - self._started
        console.print(f"[bold]{name}[/bold]: {message} [dim]({elapsed:.0f} s)[/dim]")

    def run_started(self, name: RunName, todo: int, total: int) -> None:
        """Start a progress bar for one eval run."""
        self._stop()
        console.print(f"  run {name}: {todo} of {total} dialogues to do")
        self._progress = Progress(
            *progress_columns(), console=console, disable=not sys.stdout.isatty()
        )
        self._progress.start()
        self._task = self._progress.add_task(name, total=todo)

    def sample_done(self) -> SampleCallback | None:
        """Advance the current bar."""

        def advance(_sample: Sample, _done: SampleDone) -> None:
            if self._progress is not None:
                self._progress.advance(self._task)

        return advance

    def report(self, report: BeforeAfter) -> None:
        """Print the before/after table."""
        from safeturn.report.compare import print_before_after

        self._stop()
        print_before_after(report, console)


def loop_command(
    config: Annotated[
        Path | None, typer.Option(help="YAML of LoopConfig fields; --set and flags win")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="embedded, hf:DIR or a checkpoint DIR [default: embedded]")
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data", "-d", help="seed data spec (repeatable), e.g. figstep:PATH, or demo"
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="loop folder [default: runs/loop]")] = None,
    set_: SetOpt = None,
    until: Annotated[
        str, typer.Option(help=f"stop after this step: {', '.join(STEPS)}")
    ] = "report",
) -> None:
    r"""Close the loop: evaluate, train on the failures, re-evaluate on held-out seeds, compare.

    Any `LoopConfig` field is set with `--set`, trainer sections with dotted keys, e.g.
    `--set turns=1,2 --set trainer=grpo --set grpo.num_generations=4 --set pairwise=none`;
    a list is a YAML flow list (judges=\[classifier,refusal]). Re-running with the same
    --out skips the finished steps and resumes an interrupted eval.
    """
    if until not in STEPS:
        raise typer.BadParameter(f"--until must be one of {', '.join(STEPS)}")
    settings = LoopConfig.load(config, sets=set_ or (), model=model, data=data, out=out)
    started = time.perf_counter()
    last: StepName = next(step for step in STEPS if step == until)
    result = run_loop(settings, until=last, events=_ConsoleEvents())
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    console.print(
        f"loop done in {time.perf_counter() - started:.0f} s; ran {', '.join(result.ran) or '-'}"
        f"; skipped {', '.join(result.skipped) or '-'}"
    )
    if result.report is not None:
        console.print(f"report: {settings.out / 'report.html'} (and report.json)")
