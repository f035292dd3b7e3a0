"""`safeturn train`: alignment training on TRL (refusal SFT, turn-aware GRPO, DREAM, RLAIF).

Every trainer takes the same few options: `--config` (a YAML of its config's fields), `--model`,
`--data`, `--out`, and `--set KEY=VALUE` for any other field, checked against the trainer's
config class (`safeturn train list` names it), so a new field needs no new option.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.commands._errors import ErrorReportingGroup
from safeturn.commands._train_options import (
    ConfigOpt,
    DataOpt,
    ModelOpt,
    OutOpt,
    SetOpt,
    load_config,
)
from safeturn.commands.train_dream import dpo_command, dream_command, dream_risks_command

if TYPE_CHECKING:
    from safeturn.train.grpo import GRPOResult
    from safeturn.train.sft import SFTResult

train_app = typer.Typer(
    name="train",
    help="Align a model on TRL: refusal SFT, turn-aware GRPO, DREAM (risk-aware SFT + RLAIF).",
    no_args_is_help=True,
    cls=ErrorReportingGroup,
)
console = Console()


@train_app.callback()
def _train() -> None:
    """Alignment training on TRL."""


@train_app.command("list")
def list_command() -> None:
    """List the trainers: name, config class, example config, what each does, its module."""
    from safeturn.train.trainers import TRAINERS, get_trainer

    table = Table(title="trainers (safeturn train NAME --config YAML --set KEY=VALUE)")
    for column in ("name", "config", "example config", "summary", "from"):
        table.add_column(column, overflow="fold")
    for entry in TRAINERS.entries():
        config = get_trainer(entry.name).config.__name__
        example = str(entry.metadata.get("config_file", ""))
        cells = (entry.name, config, example, entry.summary, entry.origin)
        table.add_row(*(escape(cell) for cell in cells))
    console.print(table)


@train_app.command("sft")
def sft_command(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune on refusal dialogues with loss on assistant turns only; print a summary."""
    from safeturn.train.sft import train_sft

    settings = load_config("sft", config, set_, model=model, data=data, output_dir=out)
    with console.status("training (minutes on a CPU)..."):
        result = train_sft(settings)
    console.print(_sft_table(result))


def _sft_table(result: SFTResult) -> Table:
    table = Table(title=f"SFT: {escape(result.model)} on {result.examples} dialogues")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("steps", str(result.steps))
    table.add_row("loss (first → last)", f"{result.initial_loss:.4f} → {result.final_loss:.4f}")
    table.add_row("time", f"{result.seconds:.1f} s ({result.seconds_per_step:.2f} s/step)")
    kind = "LoRA adapter" if result.lora else "full"
    table.add_row("trainable params", f"{result.trainable_params:,} of {result.total_params:,}")
    table.add_row("saved", f"{escape(str(result.checkpoint))} ({kind})")
    return table


@train_app.command("grpo")
def grpo_command(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: Annotated[
        Path | None, typer.Option(help="safeturn JSONL of dialogues (user turns are kept)")
    ] = None,
    out: OutOpt = None,
    set_: SetOpt = None,
) -> None:
    """Turn-aware GRPO on multi-turn rollouts; print rewards and per-turn α per step."""
    from safeturn.train.grpo import train_grpo

    settings = load_config("grpo", config, set_, model=model, data=data, output_dir=out)
    with console.status("rolling out and training (minutes on a CPU)..."):
        result = train_grpo(settings)
    _print_grpo(result)


def _print_grpo(result: GRPOResult) -> None:
    table = Table(title=f"GRPO: {escape(result.model)} on {result.dialogues} dialogues")
    table.add_column("step", justify="right")
    table.add_column("reward", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("α per turn (t = 1..T)")
    for step, (reward_value, loss, alpha) in enumerate(
        zip(result.rewards, result.losses, result.turn_alpha, strict=False), start=1
    ):
        alphas = " ".join(f"{a:.3f}" for a in alpha)
        table.add_row(str(step), f"{reward_value:.4f}", f"{loss:.4f}", alphas)
    console.print(table)
    console.print(
        f"{result.steps} steps in {result.seconds:.1f} s ({result.seconds_per_step:.2f} s/step); "
        f"unscored rollouts: {result.unscored}; per-group log: {escape(str(result.turn_log))}; "
        f"saved: {escape(str(result.checkpoint))}",
        soft_wrap=True,
    )


# DREAM (`dream`: risk-aware SFT then RLAIF), RLAIF alone (`dpo`) and the released DREAM risk
# labels as a risk JSONL (`dream-risks`) live in their own module.
train_app.command("dream")(dream_command)
train_app.command("dpo")(dpo_command)
train_app.command("dream-risks")(dream_risks_command)
