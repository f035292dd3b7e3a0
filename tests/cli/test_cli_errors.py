"""The CLI's one error handler: user errors are one red `error:` line and exit code 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from safeturn.cli import app
from safeturn.commands._errors import ErrorReportingGroup
from safeturn.errors import PolicyError, SafeturnError

runner = CliRunner()


def _group(exc: BaseException) -> typer.Typer:
    """A group of one sub-group whose command raises `exc`, both reporting as the CLI does."""
    outer = typer.Typer(cls=ErrorReportingGroup)
    inner = typer.Typer(cls=ErrorReportingGroup)

    @inner.command("fail")
    def fail() -> None:
        raise exc

    @inner.command("other")
    def other() -> None:
        """A second command, so `inner` stays a group."""

    outer.add_typer(inner, name="inner")
    return outer


def test_a_safeturn_error_of_a_real_command_is_one_line_on_stderr(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "nosuch", "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no run 'nosuch'")
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_verbose_adds_the_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--verbose", "report", "nosuch", "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "StoreError: no run 'nosuch'" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: no run 'nosuch'")


def test_a_missing_user_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "none.jsonl"
    result = runner.invoke(app, ["chat", "scripted:refuse", "--file", str(missing)])
    assert result.exit_code == 1
    assert result.stderr == f"error: No such file or directory: {missing}\n"


def test_nested_groups_report_once_and_markup_is_printed_as_is() -> None:
    result = runner.invoke(_group(PolicyError("[bold]x[/bold] is no category")), ["inner", "fail"])
    assert result.exit_code == 1
    assert result.stderr == "error: [bold]x[/bold] is no category\n"


@pytest.mark.parametrize("exc", [SafeturnError(""), PolicyError("")])
def test_an_empty_message_still_names_the_error(exc: SafeturnError) -> None:
    result = runner.invoke(_group(exc), ["inner", "fail"])
    assert result.stderr == f"error: {type(exc).__name__}\n"


def test_a_bug_keeps_its_exception() -> None:
    result = runner.invoke(_group(KeyError("k")), ["inner", "fail"])
    assert isinstance(result.exception, KeyError)
    assert "error:" not in result.output


def test_usage_errors_keep_exit_code_2() -> None:
    result = runner.invoke(app, ["compare", "only-one"])
    assert result.exit_code == 2
    assert "give at least two run ids" in result.output
