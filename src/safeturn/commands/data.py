"""`safeturn data`: list the data sources, look at a set, export it."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.commands._errors import ErrorReportingGroup
from safeturn.data import LoadedSet, export_hf, export_jsonl, list_sources, load_dataset

data_app = typer.Typer(
    name="data",
    help="Load benchmark datasets as safeturn samples: list sources, show a set, export it.",
    no_args_is_help=True,
    cls=ErrorReportingGroup,
)
console = Console()
err_console = Console(stderr=True)

SpecArg = Annotated[str, typer.Argument(help="data spec SOURCE:PATH, see `safeturn data list`")]
TextOnlyOpt = Annotated[
    bool, typer.Option("--text-only", help="leave images out on purpose (none reported missing)")
]
RootOpt = Annotated[
    Path | None, typer.Option("--root", help="folder image paths resolve under (default: data's)")
]


class ExportFormat(StrEnum):
    """Output formats of `safeturn data export`."""

    jsonl = "jsonl"
    hf = "hf"


class ImageMode(StrEnum):
    """How JSONL exports carry images."""

    copy = "copy"
    embed = "embed"
    keep = "keep"


@data_app.command("list")
def list_command() -> None:
    """List the data sources and an example spec for each."""
    table = Table(title="data sources (name one with SOURCE:PATH)")
    table.add_column("source")
    table.add_column("example spec", overflow="fold")
    table.add_column("what it is")
    for info in list_sources():
        table.add_row(escape(info.prefix), escape(info.example), escape(info.summary))
    console.print(table)


def _preview(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def print_loaded(loaded: LoadedSet, *, rows: int | None = None, max_missing: int = 20) -> None:
    """Print a sample table, a one-line summary and the missing-images report."""
    table = Table(title=f"{loaded.source}: {len(loaded.samples)} samples")
    table.add_column("id", overflow="fold")
    table.add_column("category", overflow="fold")
    table.add_column("harmful")
    table.add_column("turns")
    table.add_column("first text")
    table.add_column("images")
    for sample in loaded.samples[:rows]:
        first = next((m.text for m in sample.dialogue.messages if m.text), "")
        table.add_row(
            sample.id,
            sample.category or "-",
            "-" if sample.harmful is None else str(sample.harmful).lower(),
            str(sample.turns),
            _preview(first, 48),
            str(len(sample.dialogue.images)),
        )
    console.print(table)
    harmful = Counter(s.harmful for s in loaded.samples)
    console.print(
        f"harmful: {harmful[True]}  benign: {harmful[False]}  unknown: {harmful[None]}  "
        f"left out for missing images: {len(loaded.missing_sample_ids)}  "
        f"unreadable records: {len(loaded.errors)}",
        soft_wrap=True,
    )
    if loaded.errors:
        failed = Table(title=f"unreadable records ({len(loaded.errors)}), left out")
        failed.add_column("record")
        failed.add_column("reason", overflow="fold")
        for error in loaded.errors[:max_missing]:
            failed.add_row(error.sample_id, error.reason)
        console.print(failed)
        if len(loaded.errors) > max_missing:
            console.print(f"… and {len(loaded.errors) - max_missing} more")
    if not loaded.missing_images:
        return
    report = Table(title=f"missing images ({len(loaded.missing_images)})")
    report.add_column("sample")
    report.add_column("path", overflow="fold")
    report.add_column("reason")
    for missing in loaded.missing_images[:max_missing]:
        report.add_row(missing.sample_id, missing.path, missing.reason)
    console.print(report)
    if len(loaded.missing_images) > max_missing:
        console.print(f"… and {len(loaded.missing_images) - max_missing} more")


@data_app.command()
def show(
    spec: SpecArg,
    limit: Annotated[int, typer.Option("--limit", "-n", help="samples to load and show")] = 20,
    text_only: TextOnlyOpt = False,
    root: RootOpt = None,
) -> None:
    """Load a set and show its samples and any missing images."""
    print_loaded(load_dataset(spec, text_only=text_only, limit=limit, root=root))


@data_app.command()
def export(
    spec: SpecArg,
    out: Annotated[Path, typer.Argument(help="output JSONL file, or folder for --format hf")],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f")] = ExportFormat.jsonl,
    text_only: TextOnlyOpt = False,
    limit: Annotated[int | None, typer.Option("--limit", "-n")] = None,
    images: Annotated[
        ImageMode, typer.Option("--images", help="JSONL only: copy files, embed bytes, keep paths")
    ] = ImageMode.copy,
    root: RootOpt = None,
) -> None:
    """Export a set as safeturn JSONL or as a Hugging Face dataset folder."""
    loaded = load_dataset(spec, text_only=text_only, limit=limit, root=root)
    if fmt is ExportFormat.hf:
        count = export_hf(loaded, out)
    else:
        count = export_jsonl(loaded, out, images=images.value)
    console.print(f"wrote {count} samples to {out} ({fmt.value})", soft_wrap=True)
    for error in loaded.errors:
        err_console.print(
            f"[yellow]left out {escape(error.sample_id)}:[/yellow] {escape(error.reason)}"
        )
    if loaded.missing_images:
        console.print(
            f"{len(loaded.missing_sample_ids)} samples were left out for missing images; "
            "see `safeturn data show` or use --text-only",
            soft_wrap=True,
        )
