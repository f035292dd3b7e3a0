"""`safeturn train dream`, `train dpo` and `train dream-risks`: DREAM's SFT, RLAIF and labels.

The command functions are registered on `train_app` by `commands/train.py`. `dream` and `dpo`
print one small table per round, after the starting policy's numbers when it was evaluated, so
the effect of each round is visible without opening `rounds.json`. `dream-risks` writes the
risk JSONL from the labels DREAM released with VLGuard, so that set needs no teacher model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.commands._train_options import ConfigOpt, ModelOpt, SetOpt, load_config

if TYPE_CHECKING:
    from safeturn.train.rlaif import EvalStats, RlaifResult

console = Console()

OutOpt = Annotated[Path | None, typer.Option(help="output folder (rounds and rounds.json)")]
DataOpt = Annotated[Path | None, typer.Option(help="safeturn JSONL of prompts for RLAIF")]


def dpo_command(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    set_: SetOpt = None,
) -> None:
    """Iterative RLAIF: sample k replies, score them with a risk-aware judge, DPO; repeat.

    Any `RlaifConfig` field is set with `--set`, e.g. `--set k=4 --set rounds=2
    --set risks=risks.jsonl --set eval_data=eval.jsonl`.
    """
    from safeturn.train.rlaif import train_rlaif

    settings = load_config("dpo", config, set_, model=model, data=data, output_dir=out)
    with console.status("RLAIF (minutes on a CPU)...") as status:
        result = train_rlaif(settings, progress=status.update)
    console.print(f"RLAIF from {escape(settings.model)}")
    for table in round_tables(result):
        console.print(table)


def dream_command(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    out: OutOpt = None,
    sft_data: Annotated[
        Path | None, typer.Option(help="risk-aware SFT JSONL; omit to skip the SFT stage")
    ] = None,
    data: DataOpt = None,
    set_: SetOpt = None,
) -> None:
    """DREAM: risk-aware SFT, then RLAIF rounds from the SFT checkpoint; print every round.

    Stage fields are set with dotted keys: `--set sft.max_steps=10 --set rlaif.k=4`.
    """
    from safeturn.train.dream import train_dream

    sets = list(set_ or [])
    if data is not None:  # quoted: a path is a string whatever YAML would make of it
        sets.append(f"rlaif.data={json.dumps(str(data))}")
    settings = load_config("dream", config, sets, model=model, output_dir=out, sft_data=sft_data)
    with console.status("DREAM (minutes on a CPU)...") as status:
        result = train_dream(settings, progress=status.update)
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
    loaded = load_dataset(spec, text_only=True, limit=limit)  # labels need no pixels
    records, stats = observe_records(loaded.samples)
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
