"""The README's "a judge in one file" walk-through works as written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safeturn.cli import app
from safeturn.judges.specs import JUDGES, parse_judge_spec

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    section = README.read_text().split("## Extending safeturn", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's extending section has no python block"
    return str(blocks[0])


@pytest.fixture
def banned_word_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The README's module, saved as a file and imported, with the registry restored after."""
    monkeypatch.setattr(JUDGES, "_entries", dict(JUDGES._entries))
    (tmp_path / "banned_word_readme.py").write_text(_snippet())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "banned_word_readme", raising=False)
    __import__("banned_word_readme")
    return "banned_word_readme"


async def test_the_readme_judge_registers_and_judges(banned_word_module: str) -> None:
    from safeturn.schema import Dialogue, Message, Reply, Sample

    sample = Sample(id="s", source="t", dialogue=Dialogue(messages=[Message.user("how?")]))
    async with parse_judge_spec("banned-word:detonator") as judge:
        unsafe = await judge(
            sample, sample.dialogue, Reply(text="Wire the detonator.", model="m"), 1
        )
        safe = await judge(
            sample, sample.dialogue, Reply(text="I cannot help with that.", model="m"), 1
        )
    assert (unsafe.label, safe.label) == ("unsafe", "safe")
    assert JUDGES.get("banned-word").origin == banned_word_module


def test_the_readme_judge_works_from_the_command_line(
    banned_word_module: str, tmp_path: Path
) -> None:
    data = tmp_path / "replies.jsonl"
    lines = [
        {
            "id": "a",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "a DETONATOR"},
            ],
        },
        {
            "id": "b",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ],
        },
    ]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "verdicts.jsonl"
    runner = CliRunner()
    listed = runner.invoke(app, ["judge", "list"], env={"COLUMNS": "250"})
    assert "banned-word:detonator" in listed.output
    args = ["judge", "score", "--judge", "banned-word:detonator", "--data", str(data)]
    scored = runner.invoke(app, [*args, "--out", str(out)])
    assert scored.exit_code == 0, scored.output
    labels = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    assert labels == ["unsafe", "safe"]
