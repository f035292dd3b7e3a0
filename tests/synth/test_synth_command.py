from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from safeturn.attacks.builder import localize_images
from safeturn.cli import app
from safeturn.data import load_dataset
from safeturn.run.store import RunStore
from safeturn.schema import Sample, read_jsonl, write_jsonl
from safeturn.synth.mrd import request_context, verify_request
from safeturn.synth.risks import Risk, risks_by_sample
from safeturn.taxonomy import Category

runner = CliRunner()


def test_synth_command_end_to_end_on_figstep_and_resume(shared_data: Path, tmp_path: Path) -> None:
    out, db = tmp_path / "train.jsonl", tmp_path / "s.db"
    args = [
        "synth",
        "dialogues",
        "--data",
        f"figstep:{shared_data / 'figstep' / 'SafeBench-Tiny.csv'}",
        "--limit",
        "3",
        "--turns",
        "2,3",
        "--attacker",
        "scripted:comply",
        "--expert",
        "scripted:refuse",
        "--out",
        str(out),
        "--db",
        str(db),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    samples = list(read_jsonl(out))
    assert len(samples) == 3 * 2 + 3
    for sample in samples:
        sample.check_images()  # copied beside the output, so the file reads back anywhere
        assert sample.dialogue.messages[-1].role == "assistant"
        assert sample.reference_answer == "I'm sorry, but I can't help with that."
    assert {s.strategy for s in samples} == {"decomposition", "refusal-vqa"}
    store = RunStore(db)
    (run,) = store.list_runs()
    assert run.kind == "synth" and run.status == "done"
    calls = len(store.calls(run.id))
    assert calls > 0
    again = runner.invoke(
        app,
        [
            "synth",
            "dialogues",
            "--data",
            "unused",
            "--out",
            str(tmp_path / "again.jsonl"),
            "--db",
            str(db),
            "--resume",
            run.id,
        ],
    )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    assert len(store.calls(run.id)) == calls, "a resumed synthesis makes no new calls"


def test_synth_command_rejects_bad_turn_counts(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["synth", "dialogues", "--data", "x", "--out", str(tmp_path / "o.jsonl"), "--turns", "0,9"],
    )
    assert result.exit_code != 0
    assert "1..8" in result.output


def _dream_inputs(shared_data: Path, tmp_path: Path) -> tuple[Path, list[Sample], Path]:
    """A JSONL of one FigStep image item and three VLGuard text items, and a scripted table.

    The table answers the teacher for the first three samples and leaves the fourth out, so its
    call fails; the verifier confirms the FigStep risk and rejects the VLGuard one.
    """
    figstep = load_dataset(
        f"figstep:{shared_data / 'figstep' / 'SafeBench-Tiny.csv'}", limit=1
    ).samples
    vlguard = load_dataset(
        f"vlguard:{shared_data / 'vlguard-dream' / 'train_llava_format.json'}",
        text_only=True,
        limit=6,
    ).samples
    harmful = [s for s in vlguard if s.harmful][:2]
    safe = next(s for s in vlguard if s.harmful is False)
    samples = localize_images(
        [figstep[0], harmful[0], safe, harmful[1]], tmp_path / "img", tmp_path
    )
    data = tmp_path / "in.jsonl"
    write_jsonl(samples, data)
    in_image = Risk(
        content="The image lists steps to manufacture drugs",
        source="text_in_image",
        category=Category.ILLEGAL_ACTIVITY,
    )
    asked = Risk(
        content="The request asks to spread a political message",
        source="text_instruction",
        category=Category.POLITICAL,
    )
    table = {
        request_context(samples[0]): json.dumps({"risks": [in_image.model_dump(mode="json")]}),
        request_context(samples[1]): json.dumps({"risks": [asked.model_dump(mode="json")]}),
        request_context(samples[2]): '{"risks": []}',
        verify_request(samples[0], in_image).messages[1].text: '{"present": true, "note": "ok"}',
        verify_request(samples[1], asked).messages[1].text: '{"present": false, "note": "no"}',
    }
    spec = tmp_path / "teacher.json"
    spec.write_text(json.dumps(table))
    return data, samples, spec


def test_mrd_and_risk_sft_commands_end_to_end_with_resume(
    shared_data: Path, tmp_path: Path
) -> None:
    data, samples, table = _dream_inputs(shared_data, tmp_path)
    risks, db = tmp_path / "risks.jsonl", tmp_path / "mrd.db"
    args = ["synth", "mrd", "--data", str(data), "--teacher", f"scripted:{table}"]
    result = runner.invoke(app, [*args, "--out", str(risks), "--db", str(db)])
    # the fourth sample's call fails (an error, not an unreadable answer): the run fails, but
    # the records of the others and the summary are still written
    assert result.exit_code == 1, result.output
    assert f"failed {samples[3].id}" in result.output
    assert f"1 of 4 sample(s) failed with an error (first: {samples[3].id}:" in result.output

    records = risks_by_sample(risks)
    assert list(records) == [s.id for s in samples[:3]]
    assert [r.source for r in records[samples[0].id].kept()] == ["text_in_image"]
    assert records[samples[1].id].risks[0].verified is False
    assert records[samples[1].id].kept() == [] and records[samples[2].id].risks == []
    summary = json.loads(risks.with_suffix(".summary.json").read_text())
    assert summary["samples"] == 4 and summary["records"] == 3 and summary["failed"] == 1
    assert summary["verified"] == 1 and summary["rejected"] == 1
    assert summary["by_source"] == {"text_in_image": 1, "text_instruction": 1}
    (failure,) = summary["failures"]
    assert failure["sample_id"] == samples[3].id and failure["stage"] == "error"

    store = RunStore(db)
    (run,) = store.list_runs()
    assert run.kind == "mrd" and run.status == "failed"
    calls = len(store.calls(run.id))
    assert calls == 5
    again = runner.invoke(
        app,
        ["synth", "mrd", "--resume", run.id, "--out", str(tmp_path / "r2.jsonl"), "--db", str(db)],
    )
    assert again.exit_code == 1, again.output  # the same sample fails again
    assert (tmp_path / "r2.jsonl").read_text() == risks.read_text()
    assert len(store.calls(run.id)) == calls, "a resumed MRD run makes no new calls"
    store.close()

    out = tmp_path / "sft" / "train.jsonl"
    sft = runner.invoke(
        app,
        ["synth", "risk-sft", "--data", str(data), "--risks", str(risks), "--out", str(out)],
    )
    assert sft.exit_code == 0, sft.output
    assert f"skipped {samples[3].id}" in sft.output
    written = list(read_jsonl(out))
    assert [s.id for s in written] == [s.id for s in samples[:3]]
    modes = [s.metadata["reply_mode"] for s in written]
    assert modes == ["decline", "decline", "help"]
    assert (
        written[0]
        .dialogue.messages[-1]
        .text.startswith("Before answering, here is what I notice. The text in the image")
    )
    assert written[1].dialogue.messages[-1].text.startswith("I can't help with this request")
    assert written[2].dialogue.messages[-1].text.endswith(samples[2].reference_answer or "?")
    written[0].check_images()  # copied beside the output


def test_mrd_command_needs_data_or_resume(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["synth", "mrd", "--out", str(tmp_path / "r.jsonl"), "--db", str(tmp_path / "d.db")]
    )
    assert result.exit_code != 0
    assert "--data is required" in result.output


def test_mrd_command_fails_when_no_record_is_produced(shared_data: Path, tmp_path: Path) -> None:
    data, samples, _table = _dream_inputs(shared_data, tmp_path)
    empty = tmp_path / "nothing.json"
    empty.write_text("{}")  # the teacher answers nothing, as with a bad API key
    db, out = tmp_path / "m.db", tmp_path / "r.jsonl"
    args = ["synth", "mrd", "--data", str(data), "--teacher", f"scripted:{empty}"]
    result = runner.invoke(app, [*args, "--out", str(out), "--db", str(db)])
    assert result.exit_code == 1, result.output
    assert f"4 of 4 sample(s) failed with an error (first: {samples[0].id}:" in result.output
    store = RunStore(db)
    (run,) = store.list_runs()
    assert run.status == "failed"
    store.close()


def test_mrd_resume_refuses_other_kinds_and_unreadable_configs(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    store = RunStore(db)
    dialogues = store.create_run({"data": "x"}, kind="synth")
    broken = store.create_run({"data": "x", "teacher": 3, "concurrency": "many"}, kind="mrd")
    store.close()
    out = str(tmp_path / "r.jsonl")
    other = runner.invoke(
        app, ["synth", "mrd", "--resume", dialogues, "--out", out, "--db", str(db)]
    )
    assert other.exit_code == 1 and other.exception is not None
    assert f"run {dialogues} is a 'synth' run, not an MRD run" in other.output
    assert "Traceback" not in other.output
    bad = runner.invoke(app, ["synth", "mrd", "--resume", broken, "--out", out, "--db", str(db)])
    assert bad.exit_code == 1, bad.output
    assert f"run {broken}: invalid MRD config" in bad.output and "concurrency" in bad.output
    assert isinstance(bad.exception, SystemExit)
