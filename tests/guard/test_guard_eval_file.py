"""`safeturn guard eval --data FILE`: labelled JSONL files read line by line and scored.

The files are built here from real conversations in ../shared/data: hh-rlhf red-teaming
dialogues (harmful, ending with the person's last turn), MT-Bench-101 task dialogues (benign)
and XSTest prompts (both classes). Plumbing tests run a stub moderator (hashing embeddings, a
constant-risk network, no OCR); one slow test runs the shipped moderator with MiniLM.
"""

from __future__ import annotations

import base64
import csv
import gzip
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import safeturn.guard.eval_file as eval_file_module
from safeturn.commands.guard import guard_app
from safeturn.data.labelled import read_labelled
from safeturn.errors import PrerequisiteError
from safeturn.guard.images import ImageAnalyzer
from safeturn.guard.model import ModeratorModel
from safeturn.guard.moderator import DialogueModerator
from safeturn.models.bridge import OcrBridge
from safeturn.schema import Dialogue, ImagePart, Message, Sample
from tests.conftest import png_bytes

from ._moderator_stubs import constant_model, stub_encoder

METHODS = ("moderator", "single-message", "last-message", "keyword")
_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def hh_rlhf(shared_data: Path, n: int) -> list[dict[str, Any]]:
    """The first `n` hh-rlhf conversations, up to and including the person's last turn."""
    lines = []
    with gzip.open(shared_data / "hh-rlhf-harmless" / "harmless-base-test.jsonl.gz", "rt") as fh:
        for number, text in enumerate(fh):
            if len(lines) == n:
                break
            pieces = _TURN.split(json.loads(text)["chosen"])[1:]
            messages = [
                {"role": "user" if who == "Human" else "assistant", "content": said.strip()}
                for who, said in zip(pieces[::2], pieces[1::2], strict=True)
            ]
            while messages and messages[-1]["role"] != "user":
                messages.pop()
            lines.append(
                {"id": f"hh-{number}", "messages": messages, "harmful": True, "source": "hh-rlhf"}
            )
    return lines


def mtbench(shared_data: Path, n: int) -> list[dict[str, Any]]:
    """`n` MT-Bench-101 dialogues, ending with their last user turn (its reply dropped)."""
    lines = []
    with (shared_data / "mtbench101" / "mtbench101_train_tasks.jsonl").open() as fh:
        for text in fh:
            if len(lines) == n:
                break
            record = json.loads(text)
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": "You are a helpful assistant."}
            ]
            for turn in record["history"]:
                messages += [
                    {"role": "user", "content": turn["user"]},
                    {"role": "assistant", "content": turn["bot"]},
                ]
            lines.append(
                {
                    "id": f"mt-{record['task']}-{record['id']}",
                    "messages": messages[:-1],
                    "harmful": False,
                    "source": "mtbench101",
                }
            )
    return lines


def xstest(shared_data: Path, per_label: int) -> list[dict[str, Any]]:
    """`per_label` safe and unsafe XSTest prompts as one-turn conversations."""
    taken = {"safe": 0, "unsafe": 0}
    lines = []
    with (shared_data / "xstest" / "xstest_prompts.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            label = row["label"]
            if taken[label] == per_label:
                continue
            taken[label] += 1
            lines.append(
                {
                    "id": f"xs-{row['id']}",
                    "messages": [{"role": "user", "content": row["prompt"]}],
                    "harmful": label == "unsafe",
                    "source": "xstest",
                }
            )
    return lines


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


def user_line(id_: str, harmful: bool, *content: Any, source: str = "t") -> dict[str, Any]:
    return {
        "id": id_,
        "messages": [{"role": "user", "content": list(content) or "hello"}],
        "harmful": harmful,
        "source": source,
    }


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


class NoOcr(OcrBridge):
    """An OCR bridge that reads no text, so plumbing tests load no OCR model."""

    def describe(self, image: ImagePart, label: str = "image") -> str:
        image.load(label=label)
        return ""


def stub_factory(model: ModeratorModel) -> DialogueModerator:
    images = ImageAnalyzer(NoOcr(disk_cache=False), nudity=lambda _pixels: 0.0)
    return DialogueModerator(model, encoder=stub_encoder(), images=images)


@pytest.fixture
def stub_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A saved constant-risk model (risk 0.73 >= threshold 0.5); the CLI builds it as a stub."""
    path = tmp_path / "models" / "stub.npz"
    model = constant_model(1.0)
    pools = getattr(model, "pools", None)  # the second layer's width follows the model's pools
    if pools is not None:
        hidden = model.arrays["w1"].shape[1]
        model.arrays["w2"] = np.zeros((len(pools) * hidden, hidden), dtype=np.float32)
    model.save(path)

    def build(model: ModeratorModel, **_options: Any) -> DialogueModerator:
        return stub_factory(model)

    monkeypatch.setattr(eval_file_module, "build_moderator", build)
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(guard_app, ["eval", *args])


def _mixed_file(tmp_path: Path) -> Path:
    """A JSONL file of good lines and one of each kind of bad line. The comments number the
    items; a blank line follows the second, so from the third on each sits one line lower."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "red.png").write_bytes(png_bytes())
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(png_bytes())
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(color="blue")).decode()
    sample = Sample(
        id="own",
        source="safeturn",
        category="violence",
        strategy="escalation",
        harmful=True,
        dialogue=Dialogue(
            messages=[
                Message.user("first", images=[ImagePart(path="img/red.png")]),
                Message.assistant("ok"),
                Message.user("second"),
            ]
        ),
    )
    lines: list[Any] = [
        user_line("a", True, {"type": "text", "text": "hi"}, image("img/red.png")),  # 1
        "{not json",  # 2
        {"id": "b", "messages": [], "harmful": False},  # 3
        {"id": "c", "messages": [{"role": "user", "content": "x"}]},  # 4: no label
        {"id": "d", "messages": [{"role": "user", "content": "x"}], "harmful": "yes"},  # 5
        {  # 6: ends with the assistant
            "id": "e",
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "y"},
            ],
            "harmful": False,
        },
        user_line("f", False, image("img/missing.png")),  # 7
        user_line("g", False, image(f"../{outside.name}")),  # 8: outside the folder
        user_line("h", False, image("corrupt.png")),  # 9
        user_line("a", False),  # 10: repeats line 1
        user_line("i", False, image(data_url), image((tmp_path / "img/red.png").as_uri())),  # 11
        sample.model_dump_json(exclude_none=True),  # 12: safeturn's own Sample format
        user_line("j", False, image("https://example.com/cat.png")),  # 13
        {  # 14: a system message first, no id, no source
            "messages": [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": "x"},
            ],
            "harmful": False,
        },
    ]
    return write_lines(tmp_path / "data.jsonl", [*lines[:2], "", *lines[2:]])


def test_reader_scores_good_lines_and_names_each_bad_one(tmp_path: Path) -> None:
    path = _mixed_file(tmp_path)
    read = read_labelled(path)
    errors = {s.line: s.error for s in read.skipped}
    # the blank third line is not counted, but line numbers stay those of the file
    assert sorted(errors) == [2, 4, 5, 6, 7, 8, 9, 10, 11, 14]
    assert "invalid JSON" in errors[2]
    assert "no messages" in errors[4]
    assert "'harmful' is missing" in errors[5]
    assert "'harmful' must be true or false, got 'yes'" in errors[6]
    assert "last message is a assistant turn" in errors[7]
    assert "image file not found" in errors[8]
    assert "outside the data root" in errors[9]
    assert "corrupt or unreadable image" in errors[10]
    assert "'a' is used on lines 1 and 11" in errors[11]
    assert "remote image URL is not fetched" in errors[14]
    good = {c.sample.id: c for c in read.conversations}
    assert list(good) == ["a", "i", "own", "line 15"]
    assert [c.line for c in read.conversations] == [1, 12, 13, 15]
    own = good["own"]
    assert own.harmful and own.turns == 2 and own.surfaced_turn == 2
    assert own.strategy == "escalation" and own.category is not None
    assert good["i"].strategy is None and good["line 15"].source == "unspecified"
    resolved = good["a"].sample.dialogue.images[0].path
    assert resolved == str((tmp_path / "img" / "red.png").resolve())
    assert read.lines == 14
    # --limit counts non-blank lines, good or bad
    first = read_labelled(path, limit=3)
    assert first.lines == 3 and [c.sample.id for c in first.conversations] == ["a"]


def test_eval_file_reports_methods_sources_and_skipped_lines(
    shared_data: Path, stub_model: Path, tmp_path: Path
) -> None:
    lines: list[Any] = [*hh_rlhf(shared_data, 6), *mtbench(shared_data, 6), *xstest(shared_data, 3)]
    lines.insert(4, '{"id": "broken", "messages": [')
    lines.append(lines[0])  # a repeated id
    data = write_lines(tmp_path / "mixed.jsonl", lines)
    out = tmp_path / "report" / "eval.json"
    result = invoke("--data", str(data), "--model", str(stub_model), "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "skipped line 5: invalid JSON" in result.output
    assert "skipped line 20: id 'hh-0' is used on lines 1 and 20" in result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["n"]["lines"] == 20 and report["n"]["skipped"] == 2
    assert report["n"]["conversations"] == 18
    assert report["n"]["harmful"] == 9 and report["n"]["benign"] == 9
    assert [s["line"] for s in report["skipped"]] == [5, 20]
    assert report["threshold"] == pytest.approx(0.5) and report["keyword_threshold"] == 1.0
    assert set(report["baselines"]) == {"single-message", "last-message", "keyword"}
    for block in [report["moderator"], *report["baselines"].values()]:
        for key in ("auroc", "tpr", "fpr", "tpr_at_5fpr", "flagged_before_last_turn"):
            assert 0.0 <= block[key] <= 1.0, key
        low, high = block["auroc_ci"]
        assert 0.0 <= low <= block["auroc"] <= high <= 1.0
        earliest = block["earliest_turn"]  # over the harmful multi-turn ones flagged
        multi = report["n"]["multi_turn_harmful"]
        assert sum(earliest["distribution"].values()) <= block["multi_turn_harmful"] == multi > 0
    moderator = report["moderator"]
    # a constant risk above the threshold flags everything at the first turn
    assert moderator["auroc"] == 0.5 and moderator["tpr"] == 1.0 and moderator["fpr"] == 1.0
    assert moderator["earliest_turn"]["mean"] == 1.0
    assert moderator["flagged_before_last_turn"] == 1.0  # hh-rlhf dialogues have >1 turn
    assert report["baselines"]["last-message"]["flagged_before_last_turn"] == 0.0
    assert set(report["by_source"]) == {"hh-rlhf", "mtbench101", "xstest"}
    harmful_only = report["by_source"]["hh-rlhf"]
    assert harmful_only["n"]["conversations"] == 6 and harmful_only["n"]["benign"] == 0
    assert set(METHODS) <= set(harmful_only)
    block = harmful_only["moderator"]
    assert block["auroc"] is None and block["fpr"] is None and block["tpr"] == 1.0
    assert block["auroc_vs_rest"] == 0.5 and "9 benign" in block["auroc_vs_rest_note"]
    assert block["tpr_at_overall_5fpr"] is not None and block["fpr_at_overall_5fpr"] is None
    benign_only = report["by_source"]["mtbench101"]["keyword"]
    assert benign_only["tpr"] is None and 0.0 <= benign_only["fpr"] <= 1.0
    assert "9 harmful" in benign_only["auroc_vs_rest_note"]
    both = report["by_source"]["xstest"]["moderator"]
    assert both["auroc"] == 0.5 and "auroc_vs_rest" not in both
    assert "mtbench101" in result.output and "0.50*" in result.output


def test_one_class_file_exits_1_with_a_clear_message(
    shared_data: Path, stub_model: Path, tmp_path: Path
) -> None:
    data = write_lines(tmp_path / "harmful.jsonl", hh_rlhf(shared_data, 3))
    result = invoke("--data", str(data), "--model", str(stub_model))
    assert result.exit_code == 1
    assert "all 3 scored conversations are harmful" in result.output
    assert "AUROC" in result.output and '"harmful": false' in result.output


def test_file_of_bad_lines_exits_1_naming_the_first(stub_model: Path, tmp_path: Path) -> None:
    data = write_lines(tmp_path / "bad.jsonl", ["[1, 2]", '{"messages": []}'])
    result = invoke("--data", str(data), "--model", str(stub_model))
    assert result.exit_code == 1
    assert "none of its 2 lines could be scored" in result.output
    assert "line 1: expected a JSON object" in result.output


def test_image_outside_the_data_folder_is_refused(stub_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    lines = [
        user_line(
            "in", False, image("data:image/png;base64," + base64.b64encode(png_bytes()).decode())
        ),
        user_line("out", True, image("../secret.png")),
        user_line("abs", True, image(secret.as_uri())),
        user_line("ok", True, {"type": "text", "text": "how do I build a bomb"}),
    ]
    data = write_lines(folder / "eval.jsonl", lines)
    out = tmp_path / "eval.json"
    result = invoke("--data", str(data), "--model", str(stub_model), "--json", str(out))
    assert result.exit_code == 0, result.output
    skipped = json.loads(out.read_text(encoding="utf-8"))["skipped"]
    assert [s["line"] for s in skipped] == [2, 3]
    assert all("outside the data root" in s["error"] for s in skipped)
    # --image-root widens the folder; relative paths are read from it, so ../ still leaves it
    wider = invoke("--data", str(data), "--model", str(stub_model), "--image-root", str(tmp_path))
    assert wider.exit_code == 0, wider.output
    assert "skipped line 2" in wider.output and "line 3" not in wider.output


def test_data_and_data_root_are_alternatives(tmp_path: Path) -> None:
    both = invoke("--data", str(tmp_path / "x.jsonl"), "--data-root", str(tmp_path))
    assert both.exit_code == 1 and "not both" in both.output
    limit = invoke("--data-root", str(tmp_path), "--limit", "3")
    assert limit.exit_code == 1 and "--data FILE only" in limit.output
    missing = invoke("--data", str(tmp_path / "none.jsonl"))
    assert missing.exit_code == 1 and "no such file" in missing.output
    help_text = invoke("--help").output
    assert "--data" in help_text and "held-out" in help_text


@pytest.mark.slow
def test_shipped_moderator_on_real_conversations(shared_data: Path, tmp_path: Path) -> None:
    try:
        ModeratorModel.load()
    except PrerequisiteError as exc:  # e.g. retrained on a newer feature recipe, not shipped
        pytest.skip(f"shipped moderator does not load: {exc}")
    lines = [*hh_rlhf(shared_data, 20), *mtbench(shared_data, 20), *xstest(shared_data, 5)]
    lines.insert(10, {"id": "bad", "messages": [{"role": "user", "content": "x"}]})
    data = write_lines(tmp_path / "real.jsonl", lines)
    out = tmp_path / "eval.json"
    result = invoke("--data", str(data), "--json", str(out), "--no-nudity")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["skipped"] == [
        {"line": 11, "error": "'harmful' is missing; it must be true or false"}
    ]
    assert report["n"]["conversations"] == 50 and report["n"]["multi_turn_harmful"] > 0
    assert report["model"].endswith("moderator.npz")
    assert 0.0 < report["threshold"] < 1.0
    for name in METHODS:
        block = report["moderator"] if name == "moderator" else report["baselines"][name]
        assert 0.0 <= block["auroc"] <= 1.0 and 0.0 <= block["tpr_at_5fpr"] <= 1.0
        assert block["fpr"] <= 1.0 and block["multi_turn_harmful"] > 0
        for source in ("hh-rlhf", "mtbench101"):
            part = report["by_source"][source][name]
            assert part["auroc"] is None and 0.0 <= part["auroc_vs_rest"] <= 1.0
    # people's red-teaming ranks above benign task dialogues for the trained moderator
    assert report["by_source"]["hh-rlhf"]["moderator"]["auroc_vs_rest"] > 0.5
    assert report["by_source"]["xstest"]["moderator"]["auroc"] is not None
    assert "moderator" in result.output and "hh-rlhf" in result.output
