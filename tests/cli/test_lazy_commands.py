"""The CLI imports a sub-command's module only when that command runs (start-up of `eval`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from safeturn.cli import app
from safeturn.schema import Dialogue, Message, Sample, write_jsonl

runner = CliRunner()

LAZY = ("eval", "build", "loop", "data", "judge", "guard", "train", "synth")
UNRELATED_TO_EVAL = (
    "safeturn.commands.build",
    "safeturn.commands.data",
    "safeturn.commands.guard_serve",
    "safeturn.commands.judge_files",
    "safeturn.commands.loop",
    "safeturn.commands.synth",
    "safeturn.commands.train",
    "safeturn.attacks",
    "safeturn.report.compare",
)


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (isolated from this one)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_loads_no_command_module_database_or_report() -> None:
    loaded = _modules_after("import safeturn.cli")
    heavy = {"sqlalchemy", "aiohttp", "numpy", "jinja2", "safeturn.run.store"}
    assert not heavy & loaded
    assert not set(UNRELATED_TO_EVAL) & loaded


def test_resolving_eval_loads_eval_and_no_other_command() -> None:
    loaded = _modules_after(
        "import typer.main\n"
        "from safeturn.cli import app\n"
        "group = typer.main.get_command(app)\n"
        "assert group.get_command(group.make_context('safeturn', ['eval']), 'eval') is not None"
    )
    assert "safeturn.commands.eval" in loaded
    assert not set(UNRELATED_TO_EVAL) & loaded


def test_help_lists_the_lazy_commands_and_their_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name in LAZY:
        assert name in result.output
    assert "List, inspect and export benchmark datasets." in result.output  # add_typer's help
    for _ in range(2):  # a second invocation builds the groups again, without duplicates
        judge = runner.invoke(app, ["judge", "--help"])
        assert judge.exit_code == 0, judge.output
        assert judge.output.count("refusal-eval") == 1
        assert "score" in judge.output and "validate" in judge.output
    guard = runner.invoke(app, ["guard", "--help"])
    assert "serve" in guard.output and "loso" in guard.output


def test_a_mistyped_command_is_matched_against_the_lazy_ones_too() -> None:
    result = runner.invoke(app, ["evl"])
    assert result.exit_code != 0
    assert "eval" in result.output


def test_eval_says_how_many_samples_it_loaded(tmp_path: Path) -> None:
    data = tmp_path / "set.jsonl"
    samples = [
        Sample(
            id=f"s{i}", source="t", harmful=True, dialogue=Dialogue(messages=[Message.user("x")])
        )
        for i in range(3)
    ]
    write_jsonl(samples, data)
    args = ["eval", "--model", "scripted:refuse", "--data", f"jsonl:{data}"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"loaded 3 samples from jsonl:{data} in " in result.output
