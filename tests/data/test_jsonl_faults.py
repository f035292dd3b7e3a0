"""A bad JSONL line fails that item alone; the other lines load (issue 14, item 14)."""

from __future__ import annotations

import json
from pathlib import Path

from safeturn.data.jsonl import load_jsonl
from safeturn.schema import Dialogue, Message, Sample


def _line(sample_id: str, text: str = "hello") -> str:
    sample = Sample(id=sample_id, source="mine", dialogue=Dialogue(messages=[Message.user(text)]))
    return sample.model_dump_json(exclude_none=True)


def write_mixed(path: Path) -> Path:
    """Two good lines around five bad ones: JSON, schema, turns, repeated id, not UTF-8."""
    lines = [
        _line("a").encode(),
        b"{not json",
        json.dumps({"id": "no-dialogue", "source": "mine"}).encode(),
        b"",
        json.dumps(
            {"id": "c", "source": "mine", "turns": 3, "dialogue": {"messages": []}}
        ).encode(),
        _line("a", "again").encode(),
        b'{"id": "\xff"}',
        _line("b").encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_one_bad_line_fails_that_item_not_the_load(tmp_path: Path) -> None:
    loaded = load_jsonl(write_mixed(tmp_path / "set.jsonl"))
    assert [s.id for s in loaded.samples] == ["a", "b"]
    errors = {e.sample_id: e.reason for e in loaded.errors}
    assert list(errors) == [f"set.jsonl:line-{n}" for n in (2, 3, 5, 6, 7)]
    assert "set.jsonl:2: invalid JSON" in errors["set.jsonl:line-2"]
    assert "set.jsonl:3: invalid sample (dialogue: Field required)" in errors["set.jsonl:line-3"]
    assert "turns=3 but the dialogue has 0 user messages" in errors["set.jsonl:line-5"]
    assert "item line 6 (a): duplicate sample id 'a'" in errors["set.jsonl:line-6"]
    assert "set.jsonl:7: invalid JSON" in errors["set.jsonl:line-7"]
    assert {e.source for e in loaded.errors} == {"jsonl"}


def test_a_failed_line_counts_towards_limit(tmp_path: Path) -> None:
    loaded = load_jsonl(write_mixed(tmp_path / "set.jsonl"), limit=2)
    assert [s.id for s in loaded.samples] == ["a"]
    assert [e.sample_id for e in loaded.errors] == ["set.jsonl:line-2"]


def test_data_show_and_export_name_the_lines_they_left_out(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from safeturn.cli import app

    data = write_mixed(tmp_path / "set.jsonl")
    runner = CliRunner()
    shown = runner.invoke(app, ["data", "show", f"jsonl:{data}"])
    assert shown.exit_code == 0, shown.output
    assert "unreadable records: 5" in shown.output
    assert "set.jsonl:line-2" in shown.output and "set.jsonl:line-7" in shown.output
    out = tmp_path / "out.jsonl"
    exported = runner.invoke(app, ["data", "export", f"jsonl:{data}", str(out)])
    assert exported.exit_code == 0, exported.output
    assert len(out.read_text().splitlines()) == 2
    assert "left out set.jsonl:line-3" in exported.output
