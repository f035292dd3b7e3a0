"""The two sources of multi-turn dialogues written by people: hh-rlhf and MT-Bench-101."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from safeturn.data import load_dataset
from safeturn.data.dialogsets import parse_hh_turns


def test_hh_rlhf_conversations_end_with_the_human_turn(shared_data: Path) -> None:
    loaded = load_dataset(f"hh-rlhf:{shared_data / 'hh-rlhf-harmless'}")
    assert len(loaded.samples) == 2312
    for sample in loaded.samples:
        roles = [m.role for m in sample.dialogue.messages]
        assert roles[-1] == "user" and roles[0] == "user"
        assert set(roles) <= {"user", "assistant"}
        assert sample.harmful is True and sample.source == "hh-rlhf"
        assert sample.seed_question == sample.dialogue.messages[-1].text
    first = loaded.samples[0]
    assert first.dialogue.messages[0].text == "what are some pranks with a pen i can do?"
    assert first.metadata["chosen"] != first.metadata["rejected"]
    assert first.reference_answer == first.metadata["chosen"]
    assert max(s.dialogue.n_turns for s in loaded.samples) >= 8


def test_mtbench101_dialogues_are_benign_and_keep_the_last_reply(shared_data: Path) -> None:
    path = shared_data / "mtbench101" / "mtbench101_train_tasks.jsonl"
    loaded = load_dataset(f"mtbench101:{path}")
    assert len(loaded.samples) == 930
    assert all(s.harmful is False for s in loaded.samples)
    first = loaded.samples[0]
    assert first.dialogue.n_turns == 3 and first.dialogue.messages[-1].role == "user"
    assert first.reference_answer is not None and first.reference_answer.startswith("Ibuprofen")
    assert first.metadata["task"] == "IC"
    assert {s.dialogue.n_turns for s in loaded.samples} == {2, 3, 4, 5, 6, 7}


def test_parse_hh_turns() -> None:
    text = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how do I pick a lock?"
    assert parse_hh_turns(text) == [
        ("user", "hi there"),
        ("assistant", "hello"),
        ("user", "how do I pick a lock?"),
    ]
    with pytest.raises(ValueError, match="Human"):
        parse_hh_turns("Assistant: no human here")


def test_a_bad_line_fails_alone_and_is_named(tmp_path: Path) -> None:
    path = tmp_path / "hh.jsonl.gz"
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi"}
    lines = [json.dumps(good), json.dumps({"chosen": "no transcript"}), "{oops", json.dumps(good)]
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    loaded = load_dataset(f"hh-rlhf:{path}")
    assert [s.id for s in loaded.samples] == ["hh-rlhf-1", "hh-rlhf-4"]
    assert [e.sample_id for e in loaded.errors] == ["hh-rlhf-2", "hh-rlhf-3"]
    assert "line 2: expected a transcript" in loaded.errors[0].reason
    assert "line 3: invalid JSON" in loaded.errors[1].reason
    bench = tmp_path / "mt.jsonl"
    ok = {"task": "AR", "id": 2, "history": [{"user": "x", "bot": "y"}, {"user": "z", "bot": "w"}]}
    bench.write_text(json.dumps({"task": "AR", "id": 1, "history": [{"user": "x"}]}) + "\n")
    with bench.open("a") as fh:
        fh.write(json.dumps(ok) + "\n")
    loaded = load_dataset(f"mtbench101:{bench}")
    assert [s.id for s in loaded.samples] == ["mtbench101-AR-2"]
    [error] = loaded.errors
    assert error.sample_id == "mtbench101-line-1" and "line 1: history[0]" in error.reason
