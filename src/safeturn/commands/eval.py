"""`safeturn eval`: run a model on a benchmark or on N-turn attacks built from it; judge it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from safeturn.commands._running import (
    JudgeCardOption,
    Network,
    RetriesOption,
    TimeoutOption,
    execute_and_publish,
)
from safeturn.errors import SafeturnError
from safeturn.judges.card import load_cards
from safeturn.models.spec import check_model_spec
from safeturn.redact import redact_url_credentials
from safeturn.run.engine import (
    EvalSettings,
    bulk_objects,
    run_settings,
    start_run,
    unloadable_sample,
)
from safeturn.run.store import RunStore
from safeturn.schema import GenerateParams, Sample

console = Console()


def _samples(
    data: str,
    *,
    strategies: list[str],
    turns: str,
    seed: int,
    limit: int | None,
    text_only: bool,
    attacker: str | None,
    images_dir: Path,
) -> list[Sample]:
    """Load a set; with strategies, turn every sample into N-turn attacks on the same seeds."""
    from safeturn.data import load_dataset

    started = time.perf_counter()
    with bulk_objects():  # thousands of samples kept for the run: see bulk_objects
        loaded = load_dataset(data, text_only=text_only, limit=limit)
    for missing in loaded.missing_images:
        console.print(f"[yellow]left out {missing.sample_id}:[/yellow] {missing.reason}")
    # A record that could not be read fails alone: it enters the run as a failed sample
    # that names its line, so the report counts it instead of the whole load stopping.
    failed = [unloadable_sample(e.sample_id, e.source, e.reason) for e in loaded.errors]
    for error in loaded.errors:
        console.print(f"[red]item {error.sample_id} fails:[/red] {error.reason}", soft_wrap=True)
    if not strategies:
        return _loaded(loaded.samples + failed, data, started)
    from safeturn.attacks import resolve_strategies, resolve_turns, seed_from_sample
    from safeturn.commands.build import build_closing_attacker
    from safeturn.models import load_model

    seeds = [seed_from_sample(s) for s in loaded.samples]
    model = load_model(attacker) if attacker else None
    names, counts = resolve_strategies(strategies), resolve_turns(turns)
    built = asyncio.run(
        build_closing_attacker(seeds, names, counts, seed, model, images_dir, concurrency=8)
    )
    return _loaded(built + failed, data, started)


def _loaded(samples: list[Sample], data: str, started: float) -> list[Sample]:
    """`samples`, once the user is told how many there are and how long they took."""
    took = time.perf_counter() - started
    said = f"loaded {len(samples)} samples from {data} in {took:.2f} s"
    console.print(said, markup=False, soft_wrap=True)
    return samples


def eval_command(
    model: Annotated[
        str | None,
        typer.Option(help="target model spec, e.g. openai:URL#name (not needed with --resume)"),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="data spec, e.g. figstep:PATH (not with --resume)")
    ] = None,
    strategy: Annotated[
        list[str] | None,
        typer.Option("--strategy", "-s", help="turn samples into attacks: a name, or all"),
    ] = None,
    turns: Annotated[str, typer.Option(help="turn counts for --strategy")] = "1,2,4,6,8",
    judge: Annotated[
        list[str] | None, typer.Option("--judge", "-j", help="judge spec (repeatable)")
    ] = None,
    mode: Annotated[str, typer.Option(help="live: answer every turn; replay: only the last")] = (
        "live"
    ),
    limit: Annotated[int | None, typer.Option(help="first N samples of the set")] = None,
    text_only: Annotated[bool, typer.Option(help="load the set without its images")] = False,
    attacker: Annotated[str | None, typer.Option(help="attacker model for --strategy")] = None,
    seed: Annotated[int, typer.Option(help="seed of the attack builders")] = 0,
    max_tokens: Annotated[int, typer.Option(help="tokens per reply")] = 256,
    temperature: Annotated[float, typer.Option()] = 0.0,
    draws: Annotated[
        int, typer.Option("--samples", "-n", min=1, help="answer and judge every item N times")
    ] = 1,
    sampling_seed: Annotated[
        int | None, typer.Option(help="seed of the target's sampling; draw k uses seed + k")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="samples in flight")] = 16,
    out: Annotated[Path, typer.Option(help="folder for the database and reports")] = Path(
        "runs/eval"
    ),
    db: Annotated[
        str | None,
        typer.Option(help="run database file or SQLAlchemy URL (default: OUT/safeturn.db)"),
    ] = None,
    resume: Annotated[str | None, typer.Option(help="continue this run id")] = None,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker",
            help="share the run with other --worker processes, each claiming samples "
            "(join one with --resume RUN_ID --worker)",
        ),
    ] = False,
    judge_card: JudgeCardOption = None,
    timeout: TimeoutOption = None,
    retries: RetriesOption = None,
) -> None:
    """Evaluate a model; every call and verdict is stored at once, so runs resume."""
    if mode not in ("live", "replay"):
        raise typer.BadParameter(f"--mode must be live or replay, got {mode!r}")
    try:
        store = RunStore(db or out / "safeturn.db")  # db: a str, as a Path mangles a URL's //
    except SafeturnError as exc:  # no PostgreSQL driver, a server that cannot be reached
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(code=1) from exc
    try:
        cards = load_cards(judge_card or [])  # before the run: a bad card fails fast
        if resume is None:
            if data is None or model is None:
                raise typer.BadParameter("give --model and --data (or --resume RUN_ID)")
            check_model_spec(model)  # before the run exists: a bad spec leaves no stuck run
            samples = _samples(
                data,
                strategies=strategy or [],
                turns=turns,
                seed=seed,
                limit=limit,
                text_only=text_only,
                attacker=attacker,
                images_dir=out / "images",
            )
            if draws > 1 and temperature == 0.0:
                console.print(
                    f"[yellow]note:[/yellow] --samples {draws} at temperature 0: greedy "
                    "backends give the same reply in every draw; raise --temperature"
                )
            settings = EvalSettings(
                model=model,
                judges=judge or ["refusal"],
                mode=_mode(mode),
                params=GenerateParams(
                    max_tokens=max_tokens, temperature=temperature, seed=sampling_seed
                ),
                concurrency=concurrency,
                data=data + (f" → {','.join(strategy)} × turns {turns}" if strategy else ""),
                samples=draws,
            )
            with bulk_objects():  # thousands of rows to insert: see bulk_objects
                run_id = start_run(store, samples, settings)
            del samples  # the run reads them back from the store: not twice in memory
        else:
            _check_resumed_model(store, resume, model)
            run_id = resume
        network = Network(timeout_s=timeout, max_retries=retries)
        html = out / f"report-{run_id}.html"
        execute_and_publish(store, run_id, html, cards, network, worker=worker)
    except SafeturnError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(code=1) from exc
    finally:
        store.close()


def _check_resumed_model(store: RunStore, run_id: str, model: str | None) -> None:
    """A resume runs the stored model; a different `--model` is refused, not ignored."""
    stored = run_settings(store, run_id).model
    if model is not None and redact_url_credentials(model) != stored:
        raise typer.BadParameter(
            f"run {run_id} was started with model {stored!r}; --resume always continues with "
            "it, so leave --model out (or start a new run)"
        )
    check_model_spec(stored)


def _mode(text: str) -> Literal["live", "replay"]:
    return "live" if text == "live" else "replay"
