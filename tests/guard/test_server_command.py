"""`serve_command`: the refusals to start insecurely, and the flags reaching the app."""

from __future__ import annotations

from typing import Any

import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from safeturn.commands import guard_serve
from safeturn.commands.guard_serve import is_loopback, serve_command
from safeturn.guard import jsonlog

from .conftest import TOKEN

UPSTREAM = "openai:http://localhost:8001/v1#Qwen/Qwen2.5-VL-7B-Instruct"


@pytest.fixture
def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("serve")(serve_command)

    @cli.callback()
    def _group() -> None:
        """A group, so `serve` is a sub-command as under `safeturn guard`."""

    return cli


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    """Capture `uvicorn.run` instead of serving; keep the test process's logging as it is."""
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setattr(jsonlog, "configure_json_logging", lambda level: None)
    monkeypatch.setattr(
        guard_serve, "limit_torch_threads", lambda n: calls.append(("torch_threads", {"n": n}))
    )
    return calls


def test_refuses_to_start_without_a_token(
    app: typer.Typer, served: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAFETURN_GUARD_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", "--upstream", UPSTREAM])
    assert result.exit_code == 2
    assert "SAFETURN_GUARD_TOKEN" in result.output
    assert served == []


def test_no_auth_only_on_loopback(app: typer.Typer, served: list[Any]) -> None:
    result = CliRunner().invoke(
        app, ["serve", "--upstream", UPSTREAM, "--no-auth", "--host", "0.0.0.0"]
    )
    assert result.exit_code == 2
    assert "loopback" in result.output
    assert served == []
    ok = CliRunner().invoke(app, ["serve", "--upstream", UPSTREAM, "--no-auth", "--no-db"])
    assert ok.exit_code == 0, ok.output
    assert served == [("torch_threads", {"n": 1}), served[1]]
    assert served[1][1]["host"] == "127.0.0.1"


def test_flags_reach_uvicorn(
    app: typer.Typer, served: list[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("SAFETURN_GUARD_TOKEN", TOKEN)
    args = ["serve", "--upstream", UPSTREAM, "--port", "9123", "--host", "0.0.0.0"]
    args += ["--mode", "refuse", "--db", str(tmp_path / "g.db"), "--torch-threads", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (application, options) = served[0]  # --torch-threads 0 leaves torch alone
    assert (options["host"], options["port"], options["access_log"]) == ("0.0.0.0", 9123, False)
    assert application.title == "safeturn guard"
    assert TOKEN not in result.output


def test_bad_mode(app: typer.Typer, served: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFETURN_GUARD_TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["serve", "--upstream", UPSTREAM, "--mode", "block"])
    assert result.exit_code == 2
    assert served == []


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.0.0.2", True),
     ("0.0.0.0", False), ("10.0.0.5", False), ("example.com", False)],
)  # fmt: skip
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected
