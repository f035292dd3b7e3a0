"""The package's layers, and that every module-level import points down them (docs/architecture.md).

A call-time import inside a function may point up (the `guard:` backend builds a guarded model
from `models`); a module-level one may not, or importing a low layer would drag in the high
ones and, sooner or later, an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import safeturn

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"cli", "commands", "__main__"}),
    frozenset({"demo"}),
    frozenset({"train"}),
    frozenset({"synth"}),
    frozenset({"guard", "report"}),
    frozenset({"run"}),
    frozenset({"attacks"}),
    frozenset({"judges"}),
    frozenset({"data", "models"}),
    frozenset({"metrics", "taxonomy", "jsonparse", "redact", "cache"}),
    frozenset({"schema", "registry", "resources", "__init__"}),
    frozenset({"imaging", "errors"}),
)
"""Top to bottom; a module may import its own part and any part below it."""

ROOT = Path(safeturn.__file__).parent


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _level(part: str) -> int:
    for level, members in enumerate(LAYERS):
        if part in members:
            return level
    raise AssertionError(f"safeturn.{part} is in no layer of tests/test_layers.py: place it")


def _upward_imports() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        me = _part(".".join(relative.parts)) if len(relative.parts) > 2 else relative.parts[-1]
        for node in ast.parse(path.read_text()).body:
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name == "safeturn" or name.startswith("safeturn."):
                    target = _part(name)
                    if target != me and _level(target) < _level(me):
                        found.append(f"{relative}: imports safeturn.{target} at module level")
    return found


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    parts |= {p.stem for p in ROOT.glob("*.py")}
    assert {"models", "cli", "errors"} <= parts
    for part in parts:
        _level(part)


def test_module_level_imports_only_point_down_the_layers() -> None:
    assert _upward_imports() == []


def test_the_check_sees_an_upward_import() -> None:
    assert _level("models") > _level("run") > _level("guard")
    tree = ast.parse("from safeturn.guard.base import Moderator")
    node = tree.body[0]
    assert isinstance(node, ast.ImportFrom) and node.module is not None
    assert _level(_part(node.module)) < _level("models")
