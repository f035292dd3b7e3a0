"""`safeturn synth`: training data, resumable through the run database.

`synth dialogues` builds an InterSafe-V style multi-turn set; `synth mrd` lists and verifies the
risks of each sample (DREAM step 1); `synth risk-sft` turns them into risk-aware SFT samples
(DREAM step 2).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from safeturn.attacks.builder import localize_images
from safeturn.commands._errors import ErrorReportingGroup
from safeturn.errors import SafeturnError
from safeturn.judges import load_judge
from safeturn.models import load_model
from safeturn.run.store import RunStore
from safeturn.schema import GenerateParams, Sample, write_jsonl
from safeturn.synth import Synthesizer, SynthSettings, SynthStats
from safeturn.synth.mrd import MRDResult, MRDSettings, RiskDisentangler
from safeturn.synth.risk_sft import RiskSFTBuilder
from safeturn.synth.risks import RiskRecord

if TYPE_CHECKING:
    from safeturn.attacks.base import Seed

console = Console()
synth_app = typer.Typer(
    help="Synthesize training data: multi-turn dialogues and DREAM risk data.",
    no_args_is_help=True,
    cls=ErrorReportingGroup,
)


def _turn_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v < 1 or v > 8 for v in values):
        raise typer.BadParameter(f"turn counts must be in 1..8, got {text!r}")
    return values


SynthDataOpt = Annotated[str, typer.Option(help="harmful seeds, a data spec such as figstep:PATH")]
SynthOutOpt = Annotated[Path, typer.Option(help="JSONL file to write")]
AttackerOpt = Annotated[str, typer.Option(help="model spec of the attacker")]
ExpertOpt = Annotated[str, typer.Option(help="model spec of the safety expert")]
TargetOpt = Annotated[
    str | None, typer.Option(help="keep only dialogues this model fails (optional)")
]
TurnsOpt = Annotated[str, typer.Option(help="comma-separated turn counts")]
SeedLimitOpt = Annotated[int | None, typer.Option(help="use the first N seeds")]
SeedOpt = Annotated[int, typer.Option(help="random seed of the builders")]
RefusalVqaOpt = Annotated[bool, typer.Option(help="add single-turn refusal VQA items")]
SynthMaxTokensOpt = Annotated[int, typer.Option(help="tokens per expert or target reply")]
AttackerMaxTokensOpt = Annotated[int, typer.Option(help="tokens per attacker reply")]
ImagesDirOpt = Annotated[
    Path | None, typer.Option(help="where images are copied (default: images/ beside --out)")
]
DbOpt = Annotated[str, typer.Option(help="run database file or SQLAlchemy URL")]
SynthResumeOpt = Annotated[str | None, typer.Option(help="continue this synthesis run id")]


def synth_command(
    data: SynthDataOpt,
    out: SynthOutOpt,
    attacker: AttackerOpt = "embedded",
    expert: ExpertOpt = "embedded",
    target: TargetOpt = None,
    turns: TurnsOpt = "2,4",
    limit: SeedLimitOpt = None,
    seed: SeedOpt = 0,
    refusal_vqa: RefusalVqaOpt = True,
    max_tokens: SynthMaxTokensOpt = 160,
    attacker_max_tokens: AttackerMaxTokensOpt = 512,
    images_dir: ImagesDirOpt = None,
    db: DbOpt = "runs/synth.db",
    resume: SynthResumeOpt = None,
) -> None:
    """Decompose harmful seeds into multi-turn dialogues with expert-written safe answers.

    An attacker splits each seed into innocent-looking sub-questions and a safety expert, told
    the hidden goal, writes the assistant turns.
    """
    store = RunStore(db)
    try:
        if resume is None:
            settings = SynthSettings(
                attacker=attacker,
                expert=expert,
                target=target,
                turns=_turn_list(turns),
                seed=seed,
                refusal_vqa=refusal_vqa,
                data=f"{data} (limit {limit})" if limit else data,
            )
            settings.params = settings.params.model_copy(update={"max_tokens": max_tokens})
            settings.attacker_params = settings.attacker_params.model_copy(
                update={"max_tokens": attacker_max_tokens}
            )
            run_id = store.create_run(
                {**settings.model_dump(mode="json"), "spec": data, "limit": limit}, kind="synth"
            )
        else:
            config = store.get_run(resume).config
            settings = SynthSettings.model_validate(config)
            data, limit, run_id = config["spec"], config.get("limit"), resume
        samples, stats, errors = _synthesize_set(store, run_id, settings, data, limit)
    finally:
        store.close()
    # images are copied beside the output so the JSONL reads back anywhere (read_jsonl's root)
    samples = localize_images(samples, images_dir or out.parent / "images", out.parent)
    write_jsonl(samples, out)
    console.print(_count_table(f"synthesis run {run_id}: {out}", stats.model_dump()))
    for item, error in errors:
        console.print(f"[yellow]failed {item}:[/yellow] {error}", soft_wrap=True)


def _synthesize_set(
    store: RunStore, run_id: str, settings: SynthSettings, data: str, limit: int | None
) -> tuple[list[Sample], SynthStats, list[tuple[str, str]]]:
    """Load the seeds of `data` and synthesize the run's dialogues from them; the run is done."""
    from safeturn.attacks.base import seed_from_sample
    from safeturn.data import load_dataset

    loaded = load_dataset(data, limit=limit)
    seeds = [seed_from_sample(s) for s in loaded.samples]
    for missing in loaded.missing_images:
        console.print(f"[yellow]skipped {missing.sample_id}:[/yellow] {missing.reason}")
    samples, stats, errors = asyncio.run(_synthesize(store, run_id, settings, seeds))
    store.finish_run(run_id, "done")
    return samples, stats, errors


async def _synthesize(
    store: RunStore, run_id: str, settings: SynthSettings, seeds: list[Seed]
) -> tuple[list[Sample], SynthStats, list[tuple[str, str]]]:
    attacker = load_model(settings.attacker)
    expert = attacker if settings.expert == settings.attacker else load_model(settings.expert)
    target = load_model(settings.target) if settings.target else None
    synthesizer = Synthesizer(
        store,
        run_id,
        settings,
        attacker=attacker,
        expert=expert,
        target=target,
        judge=load_judge("refusal") if target is not None else None,
    )
    per_seed = len(settings.turns) + (1 if settings.refusal_vqa else 0)
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("items", total=len(seeds) * per_seed)
            samples = await synthesizer.run(seeds, on_item=lambda _id: progress.advance(task))
    finally:
        for model in {id(m): m for m in (attacker, expert, target) if m is not None}.values():
            await model.aclose()
    return samples, synthesizer.stats, synthesizer.errors


def _load_samples(data: str, limit: int | None, text_only: bool) -> list[Sample]:
    """Samples of a data spec, or of a safeturn JSONL given as a bare path."""
    from safeturn.data import load_dataset

    spec = f"jsonl:{data}" if data.endswith(".jsonl") and Path(data).is_file() else data
    loaded = load_dataset(spec, limit=limit, text_only=text_only)
    for missing in loaded.missing_images:
        console.print(f"[yellow]skipped {missing.sample_id}:[/yellow] {missing.reason}")
    return loaded.samples


def _count_table(title: str, counts: dict[str, object]) -> Table:
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, value in counts.items():
        table.add_row(name.replace("_", " "), str(value))
    return table


MrdOutOpt = Annotated[Path, typer.Option(help="risk JSONL to write (one RiskRecord per line)")]
MrdDataOpt = Annotated[
    str | None, typer.Option(help="a data spec such as figstep:PATH, or a safeturn JSONL")
]
TeacherOpt = Annotated[str, typer.Option(help="model spec that lists the risks")]
VerifierOpt = Annotated[
    str | None, typer.Option(help="model spec that checks each risk (default: the teacher)")
]
VerifyOpt = Annotated[bool, typer.Option(help="run the verification pass")]
SummaryOpt = Annotated[
    Path | None, typer.Option(help="summary JSON (default: OUT with .summary.json)")
]
SampleLimitOpt = Annotated[int | None, typer.Option(help="use the first N samples")]
MrdTextOnlyOpt = Annotated[
    bool, typer.Option(help="load the set without its images (sets that ship none)")
]
MrdConcurrencyOpt = Annotated[int, typer.Option(min=1, help="samples in flight at once")]
MrdRetriesOpt = Annotated[int, typer.Option(min=0, help="correction turns per request")]
TeacherMaxTokensOpt = Annotated[int, typer.Option(help="tokens per teacher answer")]
MrdResumeOpt = Annotated[str | None, typer.Option(help="continue this MRD run id")]


def mrd_command(
    out: MrdOutOpt,
    data: MrdDataOpt = None,
    teacher: TeacherOpt = "embedded",
    verifier: VerifierOpt = None,
    verify: VerifyOpt = True,
    summary: SummaryOpt = None,
    limit: SampleLimitOpt = None,
    text_only: MrdTextOnlyOpt = False,
    concurrency: MrdConcurrencyOpt = 8,
    retries: MrdRetriesOpt = 2,
    max_tokens: TeacherMaxTokensOpt = 384,
    db: DbOpt = "runs/synth.db",
    resume: MrdResumeOpt = None,
) -> None:
    """List each sample's risks with their source and category, then verify each one.

    Samples whose teacher answer never parses are left out of OUT and listed, with the raw
    answer, in the summary; a resumed run repeats no finished call.
    """
    from safeturn.synth.mrd import run_failure

    if resume is None and not data:
        raise typer.BadParameter("--data is required unless --resume is given")
    store = RunStore(db)
    try:
        if resume is None:
            settings = _mrd_settings(
                {
                    "teacher": teacher,
                    "verifier": verifier,
                    "verify": verify,
                    "retries": retries,
                    "concurrency": concurrency,
                    "data": data,
                    "params": GenerateParams(max_tokens=max_tokens, temperature=0.0),
                },
                where="the MRD settings",
            )
            config = {**settings.model_dump(mode="json"), "limit": limit, "text_only": text_only}
            run_id = store.create_run(config, kind="mrd")
        else:
            settings, limit, text_only = _mrd_resume_settings(store, resume)
            run_id = resume
        samples = _load_samples(settings.data, limit, text_only)
        result = asyncio.run(_disentangle(store, run_id, settings, samples))
        problem = run_failure(result, len(samples))
        store.finish_run(run_id, "failed" if problem else "done")
    finally:
        store.close()
    _report_mrd(result, len(samples), out, summary or out.with_suffix(".summary.json"), run_id)
    if problem:
        raise SafeturnError(
            f"MRD run {run_id} failed: {problem}; fix the cause and continue with --resume {run_id}"
        )


def _report_mrd(result: MRDResult, samples: int, out: Path, summary: Path, run_id: str) -> None:
    """Write the risk records and the summary JSON; print the counts and the failures."""
    from safeturn.synth.mrd import summarize
    from safeturn.synth.risks import write_risk_records

    records, failures = result
    write_risk_records(records, out)
    report = summarize(records, failures, samples=samples)
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    counts = report.model_dump(exclude={"by_source", "by_category", "kept_by_source", "failures"})
    console.print(_count_table(f"MRD run {run_id}: {out}", counts))
    for name, table in (("source", report.by_source), ("category", report.by_category)):
        if table:
            console.print(f"by {name}: " + ", ".join(f"{k} {v}" for k, v in table.items()))
    for failure in failures:
        console.print(
            f"[yellow]failed {failure.sample_id} ({failure.stage}):[/yellow] {failure.reason}",
            soft_wrap=True,
        )
    console.print(f"summary: {summary}")


def _mrd_settings(config: dict[str, object], *, where: str) -> MRDSettings:
    """`config` as MRD settings; an invalid one is a `SafeturnError` that says `where` it was."""
    from pydantic import ValidationError

    try:
        return MRDSettings.model_validate(config)
    except ValidationError as exc:
        raise SafeturnError(f"{where}: invalid MRD config: {exc}") from exc


def _mrd_resume_settings(store: RunStore, run_id: str) -> tuple[MRDSettings, int | None, bool]:
    """The stored settings of an MRD run, refusing a run of another kind.

    A `synth dialogues` run's config would fail validation in a confusing way, or worse, pass
    it with defaults, so the kind is checked first.

    Raises:
        SafeturnError: The run is not an MRD run.
        SafeturnError: The stored config is not a valid MRD config.
    """
    row = store.get_run(run_id)
    if row.kind != "mrd":
        raise SafeturnError(
            f"run {run_id} is a {row.kind!r} run, not an MRD run; --resume takes the id of an "
            "earlier `safeturn synth mrd` run"
        )
    config = row.config
    settings = _mrd_settings(
        {k: v for k, v in config.items() if k not in ("limit", "text_only")},
        where=f"run {run_id}",
    )
    return settings, config.get("limit"), bool(config.get("text_only"))


async def _disentangle(
    store: RunStore, run_id: str, settings: MRDSettings, samples: list[Sample]
) -> MRDResult:
    teacher = load_model(settings.teacher)
    verifier = None
    if settings.verify and settings.verifier and settings.verifier != settings.teacher:
        verifier = load_model(settings.verifier)
    disentangler = RiskDisentangler(store, run_id, settings, teacher=teacher, verifier=verifier)
    columns = (TextColumn("mrd"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("samples", total=len(samples))
            return await disentangler.run(samples, on_item=lambda _id: progress.advance(task))
    finally:
        for model in {id(m): m for m in (teacher, verifier) if m is not None}.values():
            await model.aclose()


def risk_sft_command(
    data: Annotated[
        str, typer.Option(help="the samples MRD ran on: a data spec or a safeturn JSONL")
    ],
    risks: Annotated[Path, typer.Option(help="risk JSONL written by `safeturn synth mrd`")],
    out: Annotated[Path, typer.Option(help="SFT JSONL to write")],
    writer: Annotated[
        str, typer.Option(help="`template` (no model) or a model spec that writes the replies")
    ] = "template",
    limit: Annotated[int | None, typer.Option(help="use the first N samples")] = None,
    text_only: Annotated[bool, typer.Option(help="load the set without its images")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="replies written at once")] = 8,
    max_tokens: Annotated[int, typer.Option(help="tokens per writer reply")] = 256,
    images_dir: Annotated[
        Path | None, typer.Option(help="where images are copied (default: images/ beside --out)")
    ] = None,
    db: Annotated[
        str, typer.Option(help="run database file or SQLAlchemy URL (writer models only)")
    ] = "runs/synth.db",
    resume: Annotated[str | None, typer.Option(help="continue this risk-sft run id")] = None,
) -> None:
    """Write risk-aware SFT samples: a reply that names the observed risks, then declines or helps.

    The template writer composes replies from the risks and the guard's policy texts and needs
    no model; a writer model is called through the run database and can be resumed.
    """
    from safeturn.synth.risks import risks_by_sample

    records = risks_by_sample(risks)
    samples = _load_samples(data, limit, text_only)
    if writer == "template":
        builder = RiskSFTBuilder(concurrency=concurrency)
        written = asyncio.run(builder.run(samples, records))
        run_label = "template"
    else:
        store = RunStore(db)
        try:
            config = {"writer": writer, "data": data, "risks": str(risks), "limit": limit}
            run_id = resume or store.create_run(config, kind="risk-sft")
            params = GenerateParams(max_tokens=max_tokens, temperature=0.0)
            written, builder = asyncio.run(
                _write_with_model(store, run_id, writer, params, concurrency, samples, records)
            )
            store.finish_run(run_id, "done")
        finally:
            store.close()
        run_label = f"run {run_id}"
    written = localize_images(written, images_dir or out.parent / "images", out.parent)
    write_jsonl(written, out)
    counts = builder.stats.model_dump(exclude={"skipped"})
    console.print(_count_table(f"risk-aware SFT ({run_label}): {out}", counts))
    for item, why in builder.stats.skipped:
        console.print(f"[yellow]skipped {item}:[/yellow] {why}", soft_wrap=True)


async def _write_with_model(
    store: RunStore,
    run_id: str,
    spec: str,
    params: GenerateParams,
    concurrency: int,
    samples: list[Sample],
    records: dict[str, RiskRecord],
) -> tuple[list[Sample], RiskSFTBuilder]:
    model = load_model(spec)
    builder = RiskSFTBuilder(
        model, store=store, run_id=run_id, params=params, concurrency=concurrency
    )
    try:
        return await builder.run(samples, records), builder
    finally:
        await model.aclose()


synth_app.command("dialogues")(synth_command)
synth_app.command("mrd")(mrd_command)
synth_app.command("risk-sft")(risk_sft_command)
