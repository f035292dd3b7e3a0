"""The CLI's one error handler: a safeturn error becomes `error: <message>` and exit code 1.

Commands raise; they do not print their own errors. Every `safeturn` group (the top-level one
and each sub-command group) is an `ErrorReportingGroup`, so a command invoked through any of
them reports the same way, and `--verbose` adds the traceback. Anything else (a bug) keeps its
traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from safeturn.errors import SafeturnError

if TYPE_CHECKING:
    from typer import _click

USER_ERRORS: tuple[type[BaseException], ...] = (SafeturnError, OSError)
"""What a user can cause and fix (a bad input; a missing, unwritable or full path; a server
that cannot be reached): reported as one line, not as a crash."""


def report_error(exc: BaseException, *, verbose: bool = False) -> None:
    """Print `error: <message>` (red) to stderr; with `verbose`, the traceback first."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        message = f"{exc.strerror}: {exc.filename}"
    Console(stderr=True).print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test runner's capture)
        pass


def _verbose(ctx: _click.Context) -> bool:
    """Whether the root command got `--verbose` (a sub-group run alone has no such option)."""
    return bool(ctx.find_root().params.get("verbose", False))


class ErrorReportingGroup(TyperGroup):
    """A command group that reports a user error (`USER_ERRORS`) as one line with exit code 1.

    Nested groups each report at most once: the innermost turns the error into `typer.Exit`.
    """

    def invoke(self, ctx: _click.Context) -> Any:
        """Run the sub-command; a user error is reported and becomes exit code 1."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            # the reader went away (`safeturn data show … | head`): nothing to report, and
            # stdout must not be flushed again at exit, which would raise once more
            _silence_stdout()
            raise typer.Exit(code=1) from exc
        except USER_ERRORS as exc:
            report_error(exc, verbose=_verbose(ctx))
            raise typer.Exit(code=1) from exc
