"""safeturn's exceptions live in `safeturn.errors`, all under `SafeturnError`."""

from __future__ import annotations

import ast
import builtins
import inspect
import subprocess
import sys
from pathlib import Path

import safeturn.errors
from safeturn.errors import SafeturnError

SRC = Path(safeturn.errors.__file__).parent

DEFINED_ELSEWHERE = {
    "JudgeFailure": "carries a judge's raw output and words it with the judges' excerpt rule",
    "UnreadableAnswer": "MRD's retry loop turns it into a recorded failure; it never escapes",
    "AttackerRefusal": "a validator's signal inside the attacker's retry loop; never escapes",
}
"""Public exception classes that stay beside the code they belong to, and why."""


def _base_names(node: ast.ClassDef) -> set[str]:
    return {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}


def exception_classes_outside_errors() -> dict[str, str]:
    """Public exception classes defined in src outside errors.py: name → file."""
    known = {name for name, value in vars(builtins).items() if isinstance(value, type)}
    known = {name for name in known if issubclass(getattr(builtins, name), BaseException)}
    known |= {name for name, _ in inspect.getmembers(safeturn.errors, inspect.isclass)}
    classes = [
        (node, path)
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "errors.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
    ]
    found: dict[str, str] = {}
    grew = True
    while grew:  # a subclass of an exception found in the last pass is one too
        grew = False
        for node, path in classes:
            if node.name not in found and _base_names(node) & (known | set(found)):
                found[node.name] = str(path.relative_to(SRC))
                grew = True
    return {name: path for name, path in found.items() if not name.startswith("_")}


def test_every_public_exception_is_defined_in_errors() -> None:
    elsewhere = exception_classes_outside_errors()
    assert set(elsewhere) - set(DEFINED_ELSEWHERE) == set(), elsewhere
    assert set(DEFINED_ELSEWHERE) <= set(elsewhere), "an allowed class moved: drop it here"


def test_every_error_in_errors_is_a_safeturn_error() -> None:
    classes = inspect.getmembers(safeturn.errors, inspect.isclass)
    errors = [cls for _, cls in classes if issubclass(cls, BaseException)]
    assert len(errors) > 10
    assert all(issubclass(cls, SafeturnError) for cls in errors)


def test_old_import_paths_still_work_and_keep_their_builtin_bases() -> None:
    from safeturn.guard.wire import WireError
    from safeturn.models._batching import BatcherClosedError
    from safeturn.registry import RegistryError

    assert WireError(422, "bad").body()["error"]["message"] == "bad"
    assert issubclass(BatcherClosedError, RuntimeError)
    assert issubclass(RegistryError, ValueError)
    assert WireError is safeturn.errors.WireError


def test_a_reader_that_goes_away_is_not_reported_as_an_error(shared_data: Path) -> None:
    """`safeturn data show … | head -1`: the closed pipe ends the command quietly."""
    prompts = shared_data / "xstest" / "xstest_prompts.csv"
    command = [sys.executable, "-c", "from safeturn.cli import app; app()"]
    command += ["data", "show", f"xstest:{prompts}", "-n", "450"]  # ~90 KB, over a pipe's buffer
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline()
    process.stdout.close()
    errors = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1
    assert "error" not in errors.lower() and "Traceback" not in errors, errors
