"""A command group that imports a sub-command's module only when that command is used.

`safeturn eval` should not pay for the imports of `guard serve`, `train` or `synth` (a fifth
of the CLI's start-up). Each lazy command is a loader returning the command's function or its
`typer.Typer` group; it is turned into a click command the way `app.command(name)` or
`app.add_typer(group, name=..., help=...)` would, the first time the command is looked up.
Listing the commands (`safeturn --help`) loads them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import typer
import typer.main
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer import _click

Loader = Callable[[], "Callable[..., Any] | typer.Typer"]
"""Imports a command's module and returns its function, or its sub-command group."""


class LazyCommand(NamedTuple):
    """A command registered by name and loader; `help` is the group's help, as in add_typer."""

    load: Loader
    help: str | None = None


class LazyGroup(TyperGroup):
    """A group whose `lazy` commands are built when first looked up (subclass to fill it)."""

    lazy: ClassVar[dict[str, LazyCommand]] = {}
    """Name → lazy command, in the order `--help` lists them (after the eager ones)."""

    def list_commands(self, ctx: _click.Context) -> list[str]:
        """The eager commands, then the lazy ones."""
        eager = super().list_commands(ctx)
        return eager + [name for name in self.lazy if name not in eager]

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        """The command; a lazy one is imported and built now, once."""
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.commands[cmd_name] = build_command(cmd_name, self.lazy[cmd_name])
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: _click.Context, args: list[str]
    ) -> tuple[str | None, _click.Command | None, list[str]]:
        """As typer's; an unknown name first loads every command, so "did you mean" sees all."""
        if args and args[0] not in self.commands and args[0] not in self.lazy:
            for name in self.lazy:
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


def build_command(name: str, lazy: LazyCommand) -> _click.Command:
    """Load the command and turn it into a click command as the eager registration would."""
    target = lazy.load()
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer) and lazy.help is not None:
        holder.add_typer(target, name=name, help=lazy.help)
    elif isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)  # the group's own help, as add_typer gives it
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]
