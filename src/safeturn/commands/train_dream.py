"""`safeturn train dream`, `train dpo` and `train dream-risks`: DREAM's SFT, RLAIF and labels.

The command functions are registered on `train_app` by `commands/train.py`. `dream` and `dpo`
print one small table per round, after the starting policy's numbers when it was evaluated, so
the effect of each round is visible without opening `rounds.json`. `dream-risks` writes the
risk JSONL from the labels DREAM released with VLGuard, so that set needs no teacher model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.errors import SafeturnError

if TYPE_CHECKING:
    from safeturn.train.rlaif import EvalStats, RlaifResult

console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[
    str | None, typer.Option(help="local checkpoint dir, or `embedded` [default: embedded]")
]
OutOpt = Annotated[Path | None, typer.Option(help="output folder (rounds and rounds.json)")]
ConfigOpt = Annotated[Path | None, typer.Option(help="YAML config; flags override it")]
DataOpt = Annotated[Path | None, typer.Option(help="safeturn JSONL of prompts for RLAIF")]
RisksOpt = Annotated[Path | None, typer.Option(help="risk JSONL from `safeturn synth mrd`")]
JudgeOpt = Annotated[str | None, typer.Option(help="risk-score-offline or risk-score:<model spec>")]
KOpt = Annotated[int | None, typer.Option("--k", help="replies sampled per prompt")]
RoundsOpt = Annotated[int | None, typer.Option(help="RLAIF rounds")]
MarginOpt = Annotated[float | None, typer.Option(help="smallest score gap (1-10) for a pair")]
StepsOpt = Annotated[int | None, typer.Option(help="DPO steps per round (-1: epochs)")]
TokensOpt = Annotated[int | None, typer.Option(help="new tokens per sampled reply")]
LrOpt = Annotated[float | None, typer.Option(help="DPO learning rate")]
BetaOpt = Annotated[float | None, typer.Option(help="DPO beta (KL strength)")]
EvalOpt = Annotated[Path | None, typer.Option(help="JSONL evaluated after every round")]


def _rlaif_overrides(**values: Any) -> dict[str, Any]:
    renamed = {"eval_data": values.pop("eval_data", None), "max_steps": values.pop("steps", None)}
    return {**values, **renamed}


def dpo_command(
    model: ModelOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    risks: RisksOpt = None,
    judge: JudgeOpt = None,
    k: KOpt = None,
    rounds: RoundsOpt = None,
    margin: MarginOpt = None,
    steps: StepsOpt = None,
    max_new_tokens: TokensOpt = None,
    lr: LrOpt = None,
    beta: BetaOpt = None,
    eval_data: EvalOpt = None,
) -> None:
    """Iterative RLAIF: sample k replies, score them with a risk-aware judge, DPO; repeat."""
    from safeturn.train.rlaif import RlaifConfig, train_rlaif

    try:
        settings = RlaifConfig.load(
            config,
            model=model,
            output_dir=out,
            **_rlaif_overrides(
                data=data,
                risks=risks,
                judge=judge,
                k=k,
                rounds=rounds,
                margin=margin,
                steps=steps,
                max_new_tokens=max_new_tokens,
                learning_rate=lr,
                beta=beta,
                eval_data=eval_data,
            ),
        )
        with console.status("RLAIF (minutes on a CPU)...") as status:
            result = train_rlaif(settings, progress=status.update)
    except SafeturnError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=1) from exc
    console.print(f"RLAIF from {escape(settings.model)}")
    for table in round_tables(result):
        console.print(table)


def dream_command(
    model: ModelOpt = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    sft_data: Annotated[
        Path | None, typer.Option(help="risk-aware SFT JSONL; omit to skip the SFT stage")
    ] = None,
    sft_steps: Annotated[int | None, typer.Option(help="SFT optimizer steps (-1: epochs)")] = None,
    data: DataOpt = None,
    risks: RisksOpt = None,
    judge: JudgeOpt = None,
    k: KOpt = None,
    rounds: RoundsOpt = None,
    margin: MarginOpt = None,
    steps: StepsOpt = None,
    max_new_tokens: TokensOpt = None,
    lr: LrOpt = None,
    beta: BetaOpt = None,
    eval_data: EvalOpt = None,
) -> None:
    """DREAM: risk-aware SFT, then RLAIF rounds from the SFT checkpoint; print every round."""
    from safeturn.train.dream import DreamConfig, train_dream

    try:
        settings = DreamConfig.load(
            config,
            model=model,
            output_dir=out,
            sft_data=sft_data,
            sft={"max_steps": sft_steps},
            rlaif=_rlaif_overrides(
                data=data,
                risks=risks,
                judge=judge,
                k=k,
                rounds=rounds,
                margin=margin,
                steps=steps,
                max_new_tokens=max_new_tokens,
                learning_rate=lr,
                beta=beta,
                eval_data=eval_data,
            ),
        )
        with console.status("DREAM (minutes on a CPU)...") as status:
            result = train_dream(settings, progress=status.update)
    except SafeturnError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=1) from exc
    if result.sft is not None:
        sft = result.sft
        note = " (reused)" if result.sft_reused else ""
        console.print(
            f"SFT{note}: {sft.steps} steps, loss {sft.initial_loss:.4f} → {sft.final_loss:.4f}, "
            f"saved {escape(str(sft.checkpoint))}"
        )
    for table in round_tables(result.rlaif):
        console.print(table)


def dream_risks_command(
    data: Annotated[
        str,
        typer.Option(
            help="DREAM's VLGuard release: vlguard:PATH[#record|#instructions], or the JSON path"
        ),
    ],
    out: Annotated[Path, typer.Option(help="risk JSONL to write (one RiskRecord per line)")],
    limit: Annotated[int | None, typer.Option(help="use the first N samples")] = None,
) -> None:
    """Turn the released `observe` risk labels into a risk JSONL (instead of `synth mrd`).

    Records are keyed by the sample ids that the same `vlguard:` spec gives `synth risk-sft`
    and RLAIF, so pass them the same spec (the variant included).
    """
    from safeturn.data import load_dataset
    from safeturn.synth.risks import write_risk_records
    from safeturn.train.dream_labels import observe_records

    spec = data if data.startswith("vlguard:") else f"vlguard:{data}"
    try:
        loaded = load_dataset(spec, text_only=True, limit=limit)  # labels need no pixels
        records, stats = observe_records(loaded.samples)
    except SafeturnError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=1) from exc
    write_risk_records(records, out)
    table = Table(title=f"DREAM observe labels → {escape(str(out))}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for name in ("samples", "risks", "samples_without_risks", "no_risk_entries"):
        table.add_row(name.replace("_", " "), str(getattr(stats, name)))
    console.print(table)
    for name, counts in (("category", stats.by_category), ("source", stats.by_source)):
        if counts:
            console.print(f"by {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _num(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _eval_rows(table: Table, stats: EvalStats | None) -> None:
    if stats is None:
        return
    # in-sample numbers flatter the policy, which was trained on those very prompts
    where = "training prompts (in-sample!)" if stats.in_sample else "held-out eval data"
    table.add_row("eval on", f"{where}, {stats.samples} prompts")
    table.add_row("eval mean score (1-10)", f"{_num(stats.mean_score)} on {stats.scored} replies")
    table.add_row(
        "eval unsafe (harmful, low)", f"{_num(stats.unsafe_rate, '.0%')} of {stats.harmful}"
    )
    table.add_row(
        "eval refusal (benign)", f"{_num(stats.benign_refusal_rate, '.0%')} of {stats.benign}"
    )
    if stats.judge_failures:
        table.add_row("eval unscored", str(stats.judge_failures))


def round_tables(result: RlaifResult) -> list[Table]:
    """One table per round, after the starting policy's (round 0) when it was evaluated."""
    tables = []
    if result.baseline is not None:
        table = Table(title="round 0: the starting policy")
        table.add_column("")
        table.add_column("value", justify="right")
        _eval_rows(table, result.baseline)
        if 0 in result.reevaluated:
            table.title = "round 0: the starting policy (re-evaluated)"
        tables.append(table)
    for record in result.rounds:
        train = record.train
        reused = " (reused)" if record.round in result.reused else ""
        if record.round in result.reevaluated:
            reused = " (reused, re-evaluated)"
        table = Table(title=f"round {record.round}{reused}")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("preference pairs", str(record.pairs))
        table.add_row("skipped prompts", f"{record.skipped_prompts} of {record.prompts}")
        if record.skipped_long:
            table.add_row("pairs over max_length", str(record.skipped_long))
        if record.scores_reused:
            table.add_row("replies and scores", "reused from scored.jsonl")
        table.add_row("unscored replies", f"{record.judge_failures} of {record.responses}")
        table.add_row("sampled mean score", _num(record.mean_score))
        table.add_row("DPO loss (first → last)", f"{train.loss_first:.4f} → {train.loss_last:.4f}")
        table.add_row(
            "reward accuracy / margin",
            f"{_num(train.reward_accuracy)} / {_num(train.reward_margin, '.3f')}",
        )
        _eval_rows(table, record.eval)
        table.add_row(
            "time",
            f"{record.seconds:.0f} s (sampling {record.seconds_sampling:.0f} s, "
            f"DPO {train.seconds_per_step:.1f} s/step)",
        )
        table.add_row("saved", escape(str(record.checkpoint)))
        tables.append(table)
    return tables
