"""`safeturn train`: alignment training on TRL (cold-start refusal SFT for now)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.errors import SafeturnError

train_app = typer.Typer(
    name="train",
    help="Align a model on TRL: assistant-only refusal SFT.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)


@train_app.callback()
def _train() -> None:
    """Alignment training (a group: GRPO and DPO trainers join `sft`)."""


@train_app.command("sft")
def sft_command(
    model: Annotated[
        str | None, typer.Option(help="local checkpoint dir, or `embedded` [default: embedded]")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="safeturn JSONL with assistant turns")] = None,
    out: Annotated[Path | None, typer.Option(help="where the fine-tuned model is saved")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML of SafeSFTConfig fields; flags override it")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="optimizer steps (-1: epochs)")] = None,
    epochs: Annotated[float | None, typer.Option(help="passes over the data")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    batch_size: Annotated[int | None, typer.Option(help="dialogues per device batch")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="gradient accumulation steps")] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per dialogue")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    lora: Annotated[
        bool | None, typer.Option("--lora/--no-lora", help="train a LoRA adapter only")
    ] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank (with --lora)")] = None,
) -> None:
    """Fine-tune on refusal dialogues with loss on assistant turns only; print a summary."""
    from safeturn.train.sft import LoraSettings, SafeSFTConfig, train_sft

    try:
        settings = SafeSFTConfig.load(
            config,
            model=model,
            data=data,
            output_dir=out,
            max_steps=max_steps,
            epochs=epochs,
            learning_rate=lr,
            batch_size=batch_size,
            grad_accum=grad_accum,
            max_length=max_length,
            seed=seed,
        )
        if lora is False:
            settings = settings.model_copy(update={"lora": None})
        elif lora or lora_r is not None:
            adapter = settings.lora or LoraSettings()
            if lora_r is not None:
                adapter = adapter.model_copy(update={"r": lora_r})
            settings = settings.model_copy(update={"lora": adapter})
        with console.status("training (minutes on a CPU)..."):
            result = train_sft(settings)
    except SafeturnError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=1) from exc
    table = Table(title=f"SFT: {escape(result.model)} on {result.examples} dialogues")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("steps", str(result.steps))
    table.add_row("loss (first → last)", f"{result.initial_loss:.4f} → {result.final_loss:.4f}")
    table.add_row("time", f"{result.seconds:.1f} s ({result.seconds_per_step:.2f} s/step)")
    kind = "LoRA adapter" if result.lora else "full"
    table.add_row("trainable params", f"{result.trainable_params:,} of {result.total_params:,}")
    table.add_row("saved", f"{escape(str(result.checkpoint))} ({kind})")
    console.print(table)
