"""`safeturn build`: turn single-turn seeds into multi-turn attack dialogues (JSONL)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.attacks.base import STRATEGIES, Seed, seed_from_sample
from safeturn.attacks.builder import (
    BuildSummary,
    build_attacks,
    load_seeds_csv,
    localize_images,
    resolve_strategies,
    resolve_turns,
    summarize,
)
from safeturn.models import ChatModel, load_model
from safeturn.schema import Sample, write_jsonl

console = Console()
err_console = Console(stderr=True)


def build_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write")],
    data: Annotated[
        str | None,
        typer.Option(help="seed dataset spec, e.g. figstep:../shared/data/figstep"),
    ] = None,
    seeds_csv: Annotated[
        Path | None,
        typer.Option(help="FigStep-style CSV (question, instruction, category_name columns)"),
    ] = None,
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            "-s",
            help=f"strategy name ({', '.join(STRATEGIES)}); repeat, comma-separate, or all",
        ),
    ] = None,
    turns: Annotated[str, typer.Option(help="comma-separated turn counts in 1..8")] = "1,2,4,6,8",
    seed: Annotated[int, typer.Option(help="build seed (same seed, same dialogues)")] = 0,
    attacker: Annotated[
        str | None, typer.Option(help="model spec of an attacker that writes the dialogues")
    ] = None,
    images_dir: Annotated[
        Path | None,
        typer.Option(help="folder for the PNG images (default: images/ beside --out)"),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="use the first N seeds")] = None,
    text_only: Annotated[
        bool, typer.Option("--text-only", help="load --data seeds without their images")
    ] = False,
    concurrency: Annotated[int, typer.Option(help="attacker calls in flight")] = 8,
) -> None:
    """Build multi-turn attack dialogues from seeds, one per seed × strategy × turn count."""
    names = resolve_strategies(strategy or ["all"])
    counts = resolve_turns(turns)
    seeds = _load_seeds(data, seeds_csv, limit=limit, text_only=text_only)
    folder = images_dir if images_dir is not None else out.parent / "images"
    model = load_model(attacker) if attacker else None
    samples = asyncio.run(
        build_closing_attacker(seeds, names, counts, seed, model, folder, concurrency)
    )
    samples = localize_images(samples, folder, out.parent)
    written = write_jsonl(samples, out)
    console.print(_summary_table(summarize(samples), names, counts, attacker))
    console.print(f"wrote {written} samples to {out} (images in {folder})", soft_wrap=True)
    if not folder.resolve().is_relative_to(out.parent.resolve()):
        console.print(
            f"[yellow]note:[/yellow] images lie outside {out.parent}; read the file with "
            f"read_jsonl(path, root=...) covering {folder}",
            soft_wrap=True,
        )


def _load_seeds(
    data: str | None, seeds_csv: Path | None, *, limit: int | None, text_only: bool
) -> list[Seed]:
    if (data is None) == (seeds_csv is None):
        raise typer.BadParameter("give exactly one of --data or --seeds-csv")
    if seeds_csv is not None:
        return load_seeds_csv(seeds_csv, limit=limit)
    assert data is not None
    from safeturn.data import load_dataset

    loaded = load_dataset(data, text_only=text_only, limit=limit)
    for missing in loaded.missing_images:
        err_console.print(
            f"[yellow]skipped {missing.sample_id}:[/yellow] {missing.reason}", soft_wrap=True
        )
    for error in loaded.errors:
        err_console.print(
            f"[yellow]skipped {escape(error.sample_id)}:[/yellow] {escape(error.reason)}",
            soft_wrap=True,
        )
    return [seed_from_sample(sample) for sample in loaded.samples]


async def build_closing_attacker(
    seeds: Sequence[Seed],
    names: list[str],
    counts: list[int],
    seed: int,
    model: ChatModel | None,
    folder: Path,
    concurrency: int,
) -> list[Sample]:
    """Build the attacks, then close the attacker model (also used by `safeturn eval`)."""
    try:
        return await build_attacks(
            seeds,
            names,
            counts,
            seed=seed,
            attacker=model,
            images_dir=folder,
            concurrency=concurrency,
        )
    finally:
        if model is not None:
            await model.aclose()


def _summary_table(
    summary: BuildSummary, names: list[str], counts: list[int], attacker: str | None
) -> Table:
    table = Table(title="attack dialogues built (strategy × turns)")
    table.add_column("strategy")
    for n in counts:
        table.add_column(f"{n}t", justify="right")
    table.add_column("total", justify="right")
    if attacker:
        table.add_column("attacker-written", justify="right")
        table.add_column("fallbacks", justify="right")
    for name in names:
        row = [summary.counts.get((name, n), 0) for n in counts]
        cells = [name, *map(str, row), str(sum(row))]
        if attacker:
            cells += [
                str(summary.attacker_written.get(name, 0)),
                str(summary.fallbacks.get(name, 0)),
            ]
        table.add_row(*cells)
    return table
