"""`safeturn loop`: eval → failures → training data → train → re-eval held out → before/after."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from safeturn.commands._running import progress_columns
from safeturn.errors import SafeturnError
from safeturn.train.loop import STEPS, LoopEvents, RunName, StepName, run_loop
from safeturn.train.loop_config import LoopConfig, LoopError

if TYPE_CHECKING:
    from safeturn.report.compare import BeforeAfter
    from safeturn.run.engine import SampleCallback, SampleDone
    from safeturn.schema import Sample

console = Console()
err_console = Console(stderr=True)


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


def _turns(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--turns must be comma-separated integers: {text!r}") from exc


def loop_command(
    config: Annotated[
        Path | None, typer.Option(help="YAML of LoopConfig fields; flags override it")
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
    limit: Annotated[int | None, typer.Option(help="first N rows of each data spec")] = None,
    held_out: Annotated[
        float | None, typer.Option(help="share of seed groups held out [default: 0.5]")
    ] = None,
    split_seed: Annotated[int | None, typer.Option(help="seed of the held-out split")] = None,
    strategy: Annotated[
        list[str] | None, typer.Option("--strategy", "-s", help="attack strategy (repeatable)")
    ] = None,
    heldout_strategy: Annotated[
        list[str] | None,
        typer.Option(help="strategy built for the held-out seeds only (repeatable)"),
    ] = None,
    turns: Annotated[str | None, typer.Option(help="turn counts, e.g. 1,2 [default: 1,2]")] = None,
    judge: Annotated[
        list[str] | None,
        typer.Option("--judge", "-j", help="judge spec (repeatable); the first is the headline"),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="tokens per reply [default: 48]")] = None,
    synthesis: Annotated[
        str | None, typer.Option(help="template (offline) or intersafe (expert model)")
    ] = None,
    expert: Annotated[str | None, typer.Option(help="expert model spec for intersafe")] = None,
    benign: Annotated[
        bool | None, typer.Option("--benign/--no-benign", help="train on benign over-refusals")
    ] = None,
    anchors: Annotated[
        bool | None,
        typer.Option(
            "--anchors/--no-anchors", help="also train on benign twins answered well (own replies)"
        ),
    ] = None,
    trainer: Annotated[str | None, typer.Option(help="sft, grpo or dream [default: sft]")] = None,
    steps: Annotated[int | None, typer.Option(help="SFT optimizer steps (sft.max_steps)")] = None,
    lr: Annotated[float | None, typer.Option(help="SFT learning rate")] = None,
    pairwise: Annotated[
        str | None, typer.Option(help="pairwise judge for after-vs-before win rate; none: skip")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="loop folder [default: runs/loop]")] = None,
    until: Annotated[
        str, typer.Option(help=f"stop after this step: {', '.join(STEPS)}")
    ] = "report",
) -> None:
    """Close the loop: evaluate, train on the failures, re-evaluate on held-out seeds, compare.

    Re-running with the same --out skips the finished steps and resumes an interrupted eval.
    """
    if until not in STEPS:
        raise typer.BadParameter(f"--until must be one of {', '.join(STEPS)}")
    sft: dict[str, Any] | None = None
    if steps is not None or lr is not None:
        sft = {k: v for k, v in {"max_steps": steps, "learning_rate": lr}.items() if v is not None}
    try:
        settings = LoopConfig.load(
            config,
            model=model,
            data=data,
            limit=limit,
            held_out=held_out,
            split_seed=split_seed,
            strategies=strategy,
            heldout_strategies=heldout_strategy,
            turns=_turns(turns),
            judges=judge,
            max_tokens=max_tokens,
            synthesis=synthesis,
            expert=expert,
            include_benign=benign,
            benign_anchors=anchors,
            trainer=trainer,
            out=out,
        )
        updates: dict[str, Any] = {}
        if sft is not None:
            updates["sft"] = {**settings.sft, **sft}
        if pairwise is not None:
            updates["pairwise"] = None if pairwise.lower() == "none" else pairwise
        if updates:  # merged after the file, and `--pairwise none` must be able to set None
            try:
                settings = LoopConfig.model_validate({**settings.model_dump(), **updates})
            except ValidationError as exc:
                raise LoopError(f"loop config: {exc}") from exc
        started = time.perf_counter()
        last: StepName = next(step for step in STEPS if step == until)
        result = run_loop(settings, until=last, events=_ConsoleEvents())
    except SafeturnError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=1) from exc
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    console.print(
        f"loop done in {time.perf_counter() - started:.0f} s; ran {', '.join(result.ran) or '-'}"
        f"; skipped {', '.join(result.skipped) or '-'}"
    )
    if result.report is not None:
        console.print(f"report: {settings.out / 'report.html'} (and report.json)")
