"""Every third-party package that `src/` imports is declared, so a fresh install can run it.

Declared means: in pyproject's dependencies or one of its extras, or installed by the Makefile
with `--no-deps` (wheels whose own pins would clash, such as nudenet's OpenCV).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "safeturn"


def _normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (`PyYAML` = `pyyaml`, `a_b` = `a-b`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    """`psycopg[binary]==3.3.6  # why` → `psycopg`."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match is not None, f"unreadable requirement {requirement!r}"
    return _normalize(match.group(1))


def imported_modules(root: Path) -> dict[str, set[str]]:
    """Top-level modules imported anywhere under `root` (absolute imports), with file names."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    return found


def third_party(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """`modules` without the standard library, `__future__` and safeturn itself."""
    own = {"safeturn", "__future__"}
    return {m: f for m, f in modules.items() if m not in sys.stdlib_module_names | own}


def declared_distributions() -> set[str]:
    """pyproject's dependencies and extras, and the Makefile's `--no-deps` installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    requirements += re.findall(r"pip install .*--no-deps\s+(\S+)", makefile)
    return {_requirement_name(r) for r in requirements}


def test_every_imported_package_is_declared() -> None:
    providers = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    undeclared: list[str] = []
    for module, files in sorted(third_party(imported_modules(SRC)).items()):
        distributions = {_normalize(d) for d in providers.get(module, [])}
        if not distributions:
            undeclared.append(f"{module} (no installed distribution provides it; {min(files)})")
        elif not distributions & declared:
            undeclared.append(f"{module} from {sorted(distributions)} ({min(files)})")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)


def test_the_check_sees_imports_of_every_form(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os.path\nimport numpy as np, yaml\nfrom PIL import Image\nfrom . import sibling\n"
        "def f():\n    import torch.nn\n    from safeturn.errors import SafeturnError\n",
        encoding="utf-8",
    )
    found = imported_modules(tmp_path)
    assert set(third_party(found)) == {"numpy", "yaml", "PIL", "torch"}


def test_declared_names_are_normalized() -> None:
    declared = declared_distributions()
    assert {"pyyaml", "psycopg", "nudenet", "pytest"} <= declared
    assert _requirement_name("Jinja2==3.1.6  # reports") == "jinja2"
