"""`safeturn eval`: run a model on a benchmark or on N-turn attacks built from it; judge it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
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


ModelOpt = Annotated[
    str | None,
    typer.Option(help="target model spec, e.g. openai:URL#name (not needed with --resume)"),
]
DataOpt = Annotated[
    str | None, typer.Option(help="data spec, e.g. figstep:PATH (not with --resume)")
]
StrategyOpt = Annotated[
    list[str] | None,
    typer.Option("--strategy", "-s", help="turn samples into attacks: a name, or all"),
]
TurnsOpt = Annotated[str, typer.Option(help="turn counts for --strategy")]
JudgeOpt = Annotated[
    list[str] | None, typer.Option("--judge", "-j", help="judge spec (repeatable)")
]
ModeOpt = Annotated[str, typer.Option(help="live: answer every turn; replay: only the last")]
LimitOpt = Annotated[int | None, typer.Option(help="first N samples of the set")]
TextOnlyOpt = Annotated[bool, typer.Option(help="load the set without its images")]
AttackerOpt = Annotated[str | None, typer.Option(help="attacker model for --strategy")]
SeedOpt = Annotated[int, typer.Option(help="seed of the attack builders")]
MaxTokensOpt = Annotated[int, typer.Option(help="tokens per reply")]
TemperatureOpt = Annotated[float, typer.Option()]
DrawsOpt = Annotated[
    int, typer.Option("--samples", "-n", min=1, help="answer and judge every item N times")
]
SamplingSeedOpt = Annotated[
    int | None, typer.Option(help="seed of the target's sampling; draw k uses seed + k")
]
ConcurrencyOpt = Annotated[int, typer.Option(help="samples in flight")]
OutOpt = Annotated[Path, typer.Option(help="folder for the database and reports")]
DbOpt = Annotated[
    str | None,
    typer.Option(help="run database file or SQLAlchemy URL (default: OUT/safeturn.db)"),
]
ResumeOpt = Annotated[str | None, typer.Option(help="continue this run id")]
WorkerOpt = Annotated[
    bool,
    typer.Option(
        "--worker",
        help="share the run with other --worker processes, each claiming samples "
        "(join one with --resume RUN_ID --worker)",
    ),
]


@dataclass(frozen=True)
class NewRun:
    """The options that make a new run (`--resume` reads them back from the store instead)."""

    model: str | None
    data: str | None
    strategies: list[str]
    turns: str
    judges: list[str]
    mode: Literal["live", "replay"]
    limit: int | None
    text_only: bool
    attacker: str | None
    seed: int
    params: GenerateParams
    draws: int
    concurrency: int
    images_dir: Path


def eval_command(
    model: ModelOpt = None,
    data: DataOpt = None,
    strategy: StrategyOpt = None,
    turns: TurnsOpt = "1,2,4,6,8",
    judge: JudgeOpt = None,
    mode: ModeOpt = "live",
    limit: LimitOpt = None,
    text_only: TextOnlyOpt = False,
    attacker: AttackerOpt = None,
    seed: SeedOpt = 0,
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    draws: DrawsOpt = 1,
    sampling_seed: SamplingSeedOpt = None,
    concurrency: ConcurrencyOpt = 16,
    out: OutOpt = Path("runs/eval"),
    db: DbOpt = None,
    resume: ResumeOpt = None,
    worker: WorkerOpt = False,
    judge_card: JudgeCardOption = None,
    timeout: TimeoutOption = None,
    retries: RetriesOption = None,
) -> None:
    """Evaluate a model; every call and verdict is stored at once, so runs resume."""
    new = NewRun(
        model=model,
        data=data,
        strategies=strategy or [],
        turns=turns,
        judges=judge or ["refusal"],
        mode=_mode(mode),
        limit=limit,
        text_only=text_only,
        attacker=attacker,
        seed=seed,
        params=GenerateParams(max_tokens=max_tokens, temperature=temperature, seed=sampling_seed),
        draws=draws,
        concurrency=concurrency,
        images_dir=out / "images",
    )
    cards = load_cards(judge_card or [])  # before the run: a bad card fails fast
    store = RunStore(db or out / "safeturn.db")  # db: a str, as a Path mangles a URL's //
    try:
        run_id = _start(store, new) if resume is None else _resumed(store, resume, model)
        network = Network(timeout_s=timeout, max_retries=retries)
        html = out / f"report-{run_id}.html"
        execute_and_publish(store, run_id, html, cards, network, worker=worker)
    finally:
        store.close()


def _start(store: RunStore, new: NewRun) -> str:
    """Load (and build) the samples and store them as a new run; its id."""
    if new.data is None or new.model is None:
        raise typer.BadParameter("give --model and --data (or --resume RUN_ID)")
    check_model_spec(new.model)  # before the run exists: a bad spec leaves no stuck run
    samples = _samples(
        new.data,
        strategies=new.strategies,
        turns=new.turns,
        seed=new.seed,
        limit=new.limit,
        text_only=new.text_only,
        attacker=new.attacker,
        images_dir=new.images_dir,
    )
    if new.draws > 1 and new.params.temperature == 0.0:
        console.print(
            f"[yellow]note:[/yellow] --samples {new.draws} at temperature 0: greedy "
            "backends give the same reply in every draw; raise --temperature"
        )
    attacks = f" → {','.join(new.strategies)} × turns {new.turns}" if new.strategies else ""
    settings = EvalSettings(
        model=new.model,
        judges=new.judges,
        mode=new.mode,
        params=new.params,
        concurrency=new.concurrency,
        data=new.data + attacks,
        samples=new.draws,
    )
    with bulk_objects():  # thousands of rows to insert: see bulk_objects
        return start_run(store, samples, settings)


def _resumed(store: RunStore, run_id: str, model: str | None) -> str:
    """The run to continue, once `--model` (if given) is checked against it."""
    _check_resumed_model(store, run_id, model)
    return run_id


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
    if text not in ("live", "replay"):
        raise typer.BadParameter(f"--mode must be live or replay, got {text!r}")
    return "live" if text == "live" else "replay"
