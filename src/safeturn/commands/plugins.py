"""`safeturn plugins`: every registered member of every kind, built-in or from a plugin.

Generated from the registries (`safeturn.registry`), so a member added in one file, or by
another package through an entry point, shows here with no other edit.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safeturn.errors import SafeturnError
from safeturn.registry import Registry, all_registries


def registry_table(registry: Registry[Any], *, title: str | None = None) -> Table:
    """One row per member: its name, an example spec, what it is, and where it comes from."""
    table = Table(title=title or f"{registry.kind}s (entry-point group {registry.group})")
    for column in ("name", "example", "summary", "from"):
        table.add_column(column, overflow="fold")
    for entry in registry.entries():
        cells = (entry.name, entry.example, entry.summary, entry.origin)
        table.add_row(*(escape(cell) for cell in cells))
    return table


def plugins_command(
    kind: Annotated[
        str | None, typer.Option("--kind", help="Show one kind only, e.g. judge, backend.")
    ] = None,
) -> None:
    """List every registered backend, dataset, attack, judge, moderator and trainer."""
    registries = all_registries()
    if kind is not None and kind not in registries:
        raise SafeturnError(f"unknown kind {kind!r}; known: {', '.join(registries)}")
    console = Console()
    for name, registry in registries.items():
        if kind is None or name == kind:
            console.print(registry_table(registry))
