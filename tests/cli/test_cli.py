from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safeturn.cli import app
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, Message, Sample, write_jsonl

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("chat", "demo", "models", "runs", "report"):
        assert command in result.output


def test_models_lists_backends_and_embedded_weights() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for prefix in ("embedded", "hf", "openai", "scripted"):
        assert prefix in result.output
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in result.output


def test_chat_one_message_with_image(png_file: Path) -> None:
    result = runner.invoke(
        app, ["chat", "scripted:echo", "--image", str(png_file), "--message", "describe it"]
    )
    assert result.exit_code == 0, result.output
    assert "describe it" in result.output


def test_chat_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["chat", "scripted:echo", "--image", str(tmp_path / "no.png"), "-m", "hi"]
    )
    assert result.exit_code == 1
    assert "image file not found" in result.output and "no.png" in result.output


def test_chat_unknown_spec_is_a_clear_error() -> None:
    result = runner.invoke(app, ["chat", "nosuch:thing", "-m", "hi"])
    assert result.exit_code == 1
    assert "unknown model spec" in result.output


def test_chat_interactive_reads_until_empty_line() -> None:
    result = runner.invoke(app, ["chat", "scripted:echo"], input="first\nsecond\n\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("scripted:echo>") == 2


def test_chat_answers_every_dialogue_of_a_jsonl_file(tmp_path: Path) -> None:
    samples = [
        Sample(id=f"d{i}", source="t", dialogue=Dialogue(messages=[Message.user(f"question {i}")]))
        for i in range(3)
    ]
    path = tmp_path / "d.jsonl"
    write_jsonl(samples, path)
    result = runner.invoke(app, ["chat", "scripted:echo", "--file", str(path)])
    assert result.exit_code == 0, result.output
    for i in range(3):
        assert f"question {i}" in result.output


def test_demo_with_scripted_model_writes_report_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(
        app,
        ["demo", "--model", "scripted:comply", "--limit", "3", "-j", "refusal", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "report.json").read_text())
    # 3 seeds + 3 benign twins × 2 strategies × turn counts 1, 2, 4
    assert summary["samples"] == 36
    assert summary["attack_success_rate"]["hits"] == 18
    assert summary["over_refusal_rate"]["total"] == 18
    assert set(summary["attack_success_by_turns"]) == {"1", "2", "4"}
    assert set(summary["attack_success_by_strategy"]) == {"typography", "image-grounding"}
    html = (out / "report.html").read_text()
    assert "figstep-1-1-benign" in html and "data:image/png;base64," in html
    store = RunStore(out / "safeturn.db")
    (run,) = store.list_runs()
    calls = len(store.calls(run.id))
    assert calls == 6 * 2 * (1 + 2 + 4)
    again = runner.invoke(app, ["demo", "--out", str(out), "--resume", run.id])
    assert again.exit_code == 0, again.output
    assert "0 of 36 samples to do" in again.output
    assert len(store.calls(run.id)) == calls
    listed = runner.invoke(app, ["runs", "--db", str(out / "safeturn.db")])
    assert run.id in listed.output
    reported = runner.invoke(
        app, ["report", run.id, "--db", str(out / "safeturn.db"), "--out", str(tmp_path / "r.html")]
    )
    assert reported.exit_code == 0 and (tmp_path / "r.html").exists()


def test_report_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "nope", "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 1
    assert "no run 'nope'" in result.output


@pytest.mark.slow
def test_demo_on_the_embedded_model_gives_real_output(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--limit", "1", "--max-tokens", "24", "--out", str(out)])
    assert result.exit_code == 0, result.output
    store = RunStore(out / "safeturn.db")
    (run,) = store.list_runs()
    calls = store.calls(run.id)
    assert len(calls) == 2 * 2 * (1 + 2 + 4)
    first_turn = [c for c in calls if c.turn == 1]
    assert all(c.reply["bridge"]["method"] == "ocr" for c in first_turn)
    # the bridge read the rendered instruction off the image
    texts = " ".join(" ".join(c.reply["bridge"]["texts"]) for c in first_turn).lower()
    assert "manufacture" in texts and "herbal tea" in texts
    assert all(c.reply["text"].strip() for c in calls)
    assert all(0 < (c.completion_tokens or 0) <= 24 for c in calls)
    # the default judges: the fine-tuned embedded judge (headline) and the refusal detector
    verdicts = store.verdicts(run.id)
    assert {v.judge for v in verdicts} == {"classifier-v2", "refusal"}
    assert all(v.score is not None for v in verdicts if v.judge == "classifier-v2")
    html = (out / "report.html").read_text()
    assert "Judge agreement" in html
