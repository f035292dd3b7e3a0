"""`safeturn train`: alignment training on TRL (refusal SFT, turn-aware GRPO, DREAM)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.commands.train_dream import dpo_command, dream_command, dream_risks_command
from safeturn.errors import SafeturnError

if TYPE_CHECKING:
    from safeturn.train.config import LoraSettings

train_app = typer.Typer(
    name="train",
    help="Align a model on TRL: refusal SFT, turn-aware GRPO, DREAM (risk-aware SFT + RLAIF).",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)


@train_app.callback()
def _train() -> None:
    """Alignment training on TRL."""


def _lora(current: LoraSettings | None, lora: bool | None, rank: int | None) -> LoraSettings | None:
    """The adapter the --lora/--no-lora and --lora-r flags ask for, on top of the config's."""
    from safeturn.train.config import LoraSettings

    if lora is False:
        return None
    if lora or rank is not None:
        adapter = current or LoraSettings()
        return adapter if rank is None else adapter.model_copy(update={"r": rank})
    return current


def _fail(exc: SafeturnError) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(code=1)


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
    from safeturn.train.sft import SafeSFTConfig, train_sft

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
        settings = settings.model_copy(update={"lora": _lora(settings.lora, lora, lora_r)})
        with console.status("training (minutes on a CPU)..."):
            result = train_sft(settings)
    except SafeturnError as exc:
        raise _fail(exc) from exc
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


@train_app.command("grpo")
def grpo_command(
    model: Annotated[
        str | None, typer.Option(help="local checkpoint dir, or `embedded` [default: embedded]")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="safeturn JSONL of dialogues (user turns are kept)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="where the trained model is saved")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML of SafeGRPOConfig fields; flags override it")
    ] = None,
    judge: Annotated[
        str | None, typer.Option(help="`classifier` or `turn-scores:<model spec>`")
    ] = None,
    history: Annotated[
        str | None, typer.Option(help="`own` (on-policy) or `reference` turn histories")
    ] = None,
    num_generations: Annotated[int | None, typer.Option(help="rollouts per dialogue (N)")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="rollouts per device step (multiple of N)")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="optimizer steps (-1: epochs)")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    max_turn_tokens: Annotated[int | None, typer.Option(help="new tokens per turn")] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per rollout")] = None,
    max_turns: Annotated[int | None, typer.Option(help="user turns kept per dialogue")] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature")] = None,
    lam: Annotated[float | None, typer.Option(help="reward λ (unsafe-turn weight)")] = None,
    tau: Annotated[float | None, typer.Option(help="reward τ (harmlessness floor)")] = None,
    beta: Annotated[
        float | None,
        typer.Option(
            help="reward β, the helpfulness weight (0.25: refusing harmful beats complying)"
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    lora: Annotated[
        bool | None, typer.Option("--lora/--no-lora", help="train a LoRA adapter only")
    ] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank (with --lora)")] = None,
    use_vllm: Annotated[
        bool | None, typer.Option("--vllm/--no-vllm", help="sample turns with vLLM (GPU)")
    ] = None,
) -> None:
    """Turn-aware GRPO on multi-turn rollouts; print rewards and per-turn α per step."""
    from safeturn.train.grpo import SafeGRPOConfig, train_grpo

    try:
        settings = SafeGRPOConfig.load(
            config,
            model=model,
            data=data,
            output_dir=out,
            judge=judge,
            history=history,
            num_generations=num_generations,
            batch_size=batch_size,
            max_steps=max_steps,
            learning_rate=lr,
            max_turn_tokens=max_turn_tokens,
            max_length=max_length,
            max_turns=max_turns,
            temperature=temperature,
            seed=seed,
            use_vllm=use_vllm,
        )
        reward = settings.reward.model_copy(
            update={
                k: v for k, v in {"lam": lam, "tau": tau, "beta": beta}.items() if v is not None
            }
        )
        settings = SafeGRPOConfig.model_validate(
            {
                **settings.model_dump(),
                "reward": reward.model_dump(),
                "lora": _lora(settings.lora, lora, lora_r),
            }
        )
        with console.status("rolling out and training (minutes on a CPU)..."):
            result = train_grpo(settings)
    except SafeturnError as exc:
        raise _fail(exc) from exc
    title = f"GRPO: {escape(result.model)} on {result.dialogues} dialogues"
    table = Table(title=title)
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
