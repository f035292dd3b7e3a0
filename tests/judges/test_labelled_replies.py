"""Reading replies to judge: the chat format, safeturn samples, images, and bad lines."""

from __future__ import annotations

import base64
import csv
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from safeturn.judges.labelled_replies import read_replies
from safeturn.schema import Dialogue, Message, Sample
from tests.conftest import png_bytes


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def _xstest_rows(shared_data: Path, count: int) -> list[dict[str, str]]:
    path = shared_data / "xstest/model_completions/xstest_v2_completions_mistralinstruct.csv"
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))[:count]


def test_chat_lines_from_real_completions(shared_data: Path, tmp_path: Path) -> None:
    rows = _xstest_rows(shared_data, 5)
    lines = [
        {
            "id": row["id"],
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["completion"]},
            ],
            "label": "safe",
            "model": "mistral-instruct",
        }
        for row in rows
    ]
    read = read_replies(_write(tmp_path / "x.jsonl", lines), require_label=True)
    assert read.skipped == [] and len(read.replies) == 5
    first = read.replies[0]
    assert first.id == rows[0]["id"] and first.line == 1
    assert first.reply.text == rows[0]["completion"]
    assert first.reply.model == "mistral-instruct"
    assert [m.role for m in first.context.messages] == ["user"]
    assert first.context.messages[0].text == rows[0]["prompt"]
    assert first.turn == 1 and first.unsafe is False and first.source == "unspecified"
    assert first.sample.harmful is None and first.sample.seed_question is None


def test_multi_turn_context_and_part_lists(tmp_path: Path) -> None:
    line = {
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": [{"type": "text", "text": "I write thrillers."}]},
            {"role": "assistant", "content": "Nice."},
            {"role": "user", "content": "How would my villain do it?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Step one..."}]},
        ],
        "label": "unsafe",
        "source": "fiction",
    }
    read = read_replies(_write(tmp_path / "x.jsonl", [line]))
    item = read.replies[0]
    assert item.id == "line 1" and item.source == "fiction" and item.unsafe is True
    assert [m.role for m in item.context.messages] == ["system", "user", "assistant", "user"]
    assert item.turn == 2 and item.sample.turns == 2
    assert item.reply.text == "Step one..." and item.reply.model == "unknown"


def test_images_by_relative_path_file_url_and_data_url(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img/a.png").write_bytes(png_bytes())
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    lines = []
    for i, url in enumerate(["img/a.png", (tmp_path / "img/a.png").as_uri(), data_url]):
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
        lines.append(
            {
                "id": i,
                "messages": [
                    {"role": "user", "content": content},
                    {"role": "assistant", "content": "a red square"},
                ],
            }
        )
    read = read_replies(_write(tmp_path / "x.jsonl", lines))
    assert read.skipped == []
    first = read.replies[0].context.images[0]
    assert first.path == str((tmp_path / "img/a.png").resolve())
    assert [r.id for r in read.replies] == ["0", "1", "2"]


def test_image_outside_the_root_is_an_error_for_that_line_only(tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes())
    data = tmp_path / "data"
    data.mkdir()
    line = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": str(outside)}}],
            },
            {"role": "assistant", "content": "ok"},
        ]
    }
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}]}
    path = _write(data / "x.jsonl", [good, line])
    read = read_replies(path)
    assert [r.line for r in read.replies] == [1]
    assert read.skipped[0].line == 2 and "outside the data root" in read.skipped[0].error
    assert len(read_replies(path, image_root=tmp_path).replies) == 2  # inside this root


def test_bad_lines_name_their_line_and_the_rest_is_read(tmp_path: Path) -> None:
    user = {"role": "user", "content": "hi"}
    answer = {"role": "assistant", "content": "hello"}
    lines: list[Any] = [
        {"id": "a", "messages": [user, answer], "label": "safe"},
        "{not json",
        {"id": "b", "messages": [user], "label": "safe"},
        {"id": "c", "messages": [{"role": "system", "content": "s"}, answer], "label": "safe"},
        {"id": "d", "messages": [user, answer]},
        {"id": "e", "messages": [user, answer], "label": "harmful"},
        {"id": "a", "messages": [user, answer], "label": "unsafe"},
        {"id": "f", "messages": [user, answer, answer], "label": "safe"},
        [1, 2],
        "",
        {"id": "g", "messages": [user, answer], "label": "UNSAFE"},
    ]
    read = read_replies(_write(tmp_path / "x.jsonl", lines), require_label=True)
    assert [r.id for r in read.replies] == ["a", "g"]
    assert read.replies[1].unsafe is True
    errors = {s.line: s.error for s in read.skipped}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "invalid JSON" in errors[2]
    assert "must be the assistant reply" in errors[3]
    assert "no user message" in errors[4]
    assert "'label' is missing" in errors[5]
    assert "'harmful'" in errors[6]
    assert "lines 1 and 7" in errors[7]
    assert "assistant turn" in errors[8]
    assert "JSON object" in errors[9]


def test_labels_are_optional_for_scoring(tmp_path: Path) -> None:
    line = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    read = read_replies(_write(tmp_path / "x.jsonl", [line, {**line, "id": 2, "label": "?"}]))
    assert [r.unsafe for r in read.replies] == [None, None] and read.skipped == []


def test_reply_given_apart_from_the_messages(tmp_path: Path) -> None:
    line = {"messages": [{"role": "user", "content": "q"}], "reply": "the answer"}
    bad = {"id": 2, "messages": [{"role": "user", "content": "q"}], "reply": 3}
    read = read_replies(_write(tmp_path / "x.jsonl", [line, bad]))
    assert read.replies[0].reply.text == "the answer"
    assert "'reply' must be a string" in read.skipped[0].error


def test_safeturn_samples_with_the_reply_last_or_in_metadata(tmp_path: Path) -> None:
    dialogue = Dialogue(messages=[Message.user("how to pick a lock?")])
    last = Sample(
        id="s1",
        source="figstep",
        harmful=True,
        seed_question="how to pick a lock?",
        dialogue=dialogue.with_message(Message.assistant("First, insert a tension wrench.")),
    )
    meta = Sample(
        id="s2",
        source="figstep",
        harmful=False,
        dialogue=dialogue,
        metadata={"reply": {"text": "I can't help with that.", "model": "m1", "latency_s": 0.1}},
    )
    no_reply = Sample(id="s3", source="figstep", dialogue=dialogue)
    path = tmp_path / "s.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({**last.model_dump(mode="json"), "label": "unsafe"}),
                meta.model_dump_json(),
                no_reply.model_dump_json(),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    read = read_replies(path)
    first, second = read.replies
    assert first.reply.text == "First, insert a tension wrench." and first.unsafe is True
    assert [m.role for m in first.context.messages] == ["user"] and first.sample.turns == 1
    assert first.sample.harmful is True and first.sample.seed_question == "how to pick a lock?"
    assert second.reply.text == "I can't help with that." and second.reply.model == "m1"
    assert second.sample.harmful is False and second.source == "figstep"
    assert read.skipped[0].line == 3 and "user turn" in read.skipped[0].error


def test_gzipped_files(tmp_path: Path) -> None:
    line = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
    assert len(read_replies(path).replies) == 1


@pytest.mark.parametrize("name", ["missing.jsonl"])
def test_missing_file_raises(tmp_path: Path, name: str) -> None:
    from safeturn.errors import SchemaError

    with pytest.raises(SchemaError, match="no such file"):
        read_replies(tmp_path / name)
