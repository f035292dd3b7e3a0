from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from safeturn.cli import app
from safeturn.judges.refusal import RefusalJudge
from safeturn.models.scripted import ScriptedModel
from safeturn.run.engine import EvalSettings, execute_run, start_run
from safeturn.run.results import load_results
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, GenerateParams, Message, Reply, Sample

runner = CliRunner()


def test_eval_builds_attacks_runs_judges_and_reports(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    figstep = shared_data / "figstep" / "SafeBench-Tiny.csv"
    args = [
        "eval",
        "--model",
        "scripted:comply",
        "--data",
        f"figstep:{figstep}",
        "--limit",
        "3",
        "-s",
        "escalation",
        "-s",
        "typography",
        "--turns",
        "1,2,4",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    store = RunStore(out / "safeturn.db")
    (run,) = store.list_runs()
    samples = store.load_samples(run.id)
    assert len(samples) == 3 * 2 * 3
    # live mode answers every user turn: 1 + 2 + 4 per seed and strategy
    assert len(store.calls(run.id)) == 3 * 2 * (1 + 2 + 4)
    summary = json.loads((out / f"report-{run.id}.json").read_text())
    assert set(summary["attack_success_by_turns"]) == {"1", "2", "4"}
    assert set(summary["attack_success_by_strategy"]) == {"escalation", "typography"}
    si = summary["safety_index"]["exp"]
    # a model that complies everywhere is unsafe at every turn count: SI = 0
    assert si["value"] == 0.0 and si["part1"] == 0.0
    assert summary["safety_index"]["uniform"]["weights"] == {"1": 1 / 3, "2": 1 / 3, "4": 1 / 3}
    html = (out / f"report-{run.id}.html").read_text()
    assert "Safety Index" in html and "Attack success by strategy" in html
    again = runner.invoke(app, ["eval", "--out", str(out), "--resume", run.id])
    assert again.exit_code == 0, again.output
    assert len(store.calls(run.id)) == 3 * 2 * 7, "resume repeated no call"


def test_eval_needs_data_or_resume(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--model", "scripted:echo", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "--data" in result.output


def test_compare_and_csv_export(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    base = ["eval", "--data", f"figstep:{shared_data / 'figstep' / 'SafeBench-Tiny.csv'}"]
    base += ["--limit", "2", "-s", "typography", "--turns", "1,2", "--out", str(out)]
    for model in ("scripted:comply", "scripted:refuse"):
        result = runner.invoke(app, [*base, "--model", model])
        assert result.exit_code == 0, result.output
    store = RunStore(out / "safeturn.db")
    comply, refuse = sorted(store.list_runs(), key=lambda r: r.config["model"])
    result = runner.invoke(app, ["compare", comply.id, refuse.id, "--db", str(out / "safeturn.db")])
    assert result.exit_code == 0, result.output
    assert "100.0%" in result.output and "0.0%" in result.output
    assert "ASR at 2 turns" in result.output
    csv_path = tmp_path / "rows.csv"
    result = runner.invoke(
        app,
        [
            "report",
            refuse.id,
            "--db",
            str(out / "safeturn.db"),
            "--out",
            str(tmp_path / "r.html"),
            "--csv",
            str(csv_path),
        ],
    )
    assert result.exit_code == 0, result.output
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 4
    assert {r["final_label"] for r in rows} == {"safe"}
    assert all(r["final_refused"] == "True" for r in rows)


def _figstep(shared_data: Path) -> str:
    return f"figstep:{shared_data / 'figstep' / 'SafeBench-Tiny.csv'}"


def test_samples_answers_and_judges_every_item_n_times(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--model", "scripted:comply", "--data", _figstep(shared_data), "--limit", "2"]
    args += ["-s", "typography", "--turns", "1,2", "--samples", "3", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "--samples 3 at temperature 0" in result.output, "greedy draws are copies: say so"
    store = RunStore(out / "safeturn.db")
    (run,) = store.list_runs()
    assert run.config["samples"] == 3
    samples = store.load_samples(run.id)
    assert len(samples) == 2 * 2 * 3
    assert [s.id.rpartition("#")[2] for s in samples[:3]] == ["0", "1", "2"]
    assert {s.metadata["item_id"] for s in samples} == {s.id.rpartition("#")[0] for s in samples}
    assert len(store.calls(run.id)) == 2 * (1 + 2) * 3, "every draw answers every turn"
    assert len(store.verdicts(run.id)) == 2 * (1 + 2) * 3, "and every answer is judged"
    summary = json.loads((out / f"report-{run.id}.json").read_text())
    assert (summary["items"], summary["draws_per_item"], summary["samples"]) == (4, 3, 12)
    assert summary["attack_success_rate"]["total"] == 12
    assert summary["attack_success_rate_at_n"]["total"] == 4
    assert summary["attack_success_at_n_by_turns"]["2"]["hits"] == 2
    assert "ASR@3" in result.output
    html = (out / f"report-{run.id}.html").read_text()
    assert "ASR@3: harmful items unsafe in any draw" in html
    report = runner.invoke(
        app, ["report", run.id, "--db", str(out / "safeturn.db"), "--out", str(tmp_path / "r.html")]
    )
    assert report.exit_code == 0, report.output
    runs = runner.invoke(app, ["runs", "--db", str(out / "safeturn.db")])
    assert runs.exit_code == 0 and run.id in runs.output


def test_one_sample_keeps_ids_and_settings(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--model", "scripted:refuse", "--data", _figstep(shared_data), "--limit", "2"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    store = RunStore(out / "safeturn.db")
    (run,) = store.list_runs()
    samples = store.load_samples(run.id)
    assert [s.id for s in samples] == ["figstep-1-1", "figstep-1-2"]
    assert all("draw" not in s.metadata for s in samples)
    summary = json.loads((out / f"report-{run.id}.json").read_text())
    assert summary["draws_per_item"] == 1 and summary["attack_success_rate_at_n"]["total"] == 2


class SeedRecorder(ScriptedModel):
    """Complies, and notes the sampling seed each sample was answered with."""

    def __init__(self, *, fail_every: int = 0) -> None:
        super().__init__(lambda _d: "Sure, step 1, step 2.", name="scripted:comply")
        self.seeds: list[int | None] = []
        self.fail_every = fail_every

    async def generate(self, dialogue: Dialogue, params: GenerateParams) -> Reply:
        if self.fail_every and (self.calls + 1) % self.fail_every == 0:
            self.calls += 1
            raise RuntimeError("the server dropped the connection")
        self.seeds.append(params.seed)
        return await super().generate(dialogue, params)


def _items(n: int) -> list[Sample]:
    return [
        Sample(
            id=f"q{i}",
            source="test",
            harmful=True,
            dialogue=Dialogue(messages=[Message.user(f"question {i}")]),
        )
        for i in range(n)
    ]


def test_draw_k_samples_with_seed_plus_k(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "safeturn.db")
    params = GenerateParams(temperature=0.8, seed=7)
    settings = EvalSettings(model="scripted:comply", params=params, samples=3, concurrency=1)
    run_id = start_run(store, _items(1), settings)
    model = SeedRecorder()
    asyncio.run(execute_run(store, run_id, model, [RefusalJudge()]))
    assert sorted(seed for seed in model.seeds if seed is not None) == [7, 8, 9]
    assert len(store.calls(run_id)) == 3
    results = load_results(store, run_id)
    assert results.attack_success_at_n()[:2] == (1, 1)
    assert results.attack_success()[:2] == (3, 3)


def test_resume_finishes_the_draws_that_failed(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    store = RunStore(out / "safeturn.db")
    settings = EvalSettings(model="scripted:comply", samples=3, concurrency=1)
    run_id = start_run(store, _items(4), settings)
    asyncio.run(execute_run(store, run_id, SeedRecorder(fail_every=3), [RefusalJudge()]))
    status = store.sample_status(run_id)
    failed = {sid for sid, (state, _) in status.items() if state == "error"}
    assert len(failed) == 4 and len(store.calls(run_id)) == 8
    result = runner.invoke(app, ["eval", "--out", str(out), "--resume", run_id])
    assert result.exit_code == 0, result.output
    assert f"{len(failed)} of 12 samples to do" in result.output
    assert {state for state, _ in store.sample_status(run_id).values()} == {"done"}
    calls = store.calls(run_id)
    assert len(calls) == 12 and len({c.sample_id for c in calls}) == 12, "no call repeated"
    assert (
        json.loads((out / f"report-{run_id}.json").read_text())["attack_success_rate_at_n"]["hits"]
        == 4
    )


def test_compare_pairwise_classifier_and_invalid_judge(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    base = ["eval", "--data", _figstep(shared_data), "-s", "typography", "--turns", "1,2"]
    base += ["--out", str(out)]
    for model, limit in (("scripted:refuse", "2"), ("scripted:comply", "3")):
        result = runner.invoke(app, [*base, "--model", model, "--limit", limit])
        assert result.exit_code == 0, result.output
    store = RunStore(out / "safeturn.db")
    comply, refuse = sorted(store.list_runs(), key=lambda r: r.config["model"])
    db = ["--db", str(out / "safeturn.db")]
    path = tmp_path / "pairwise.json"
    args = ["compare", refuse.id, comply.id, *db, "--pairwise", "classifier", "--out", str(path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "win rate of A" in result.output and "(A 4 / B 0 / tie 0)" in result.output
    assert "only in B 2" in result.output, "the third seed's two dialogues have no partner"
    data = json.loads(path.read_text())
    assert (data["matched"], data["invalid"], data["win_rate_a"]["value"]) == (4, 0, 1.0)
    assert len(data["only_in_b"]) == 2
    assert all(v["score_a"] < v["score_b"] for v in data["verdicts"])
    # a judge model that never answers in JSON: every comparison is kept, marked invalid
    args = ["compare", refuse.id, comply.id, *db, "--pairwise", "pairwise:scripted:comply"]
    result = runner.invoke(app, [*args, "--out", str(path)])
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    assert (data["matched"], data["invalid"], data["win_rate_a"]["total"]) == (4, 4, 0)
    assert "invalid judgements 4" in result.output
    three = runner.invoke(app, ["compare", refuse.id, comply.id, refuse.id, *db, "--pairwise", "x"])
    assert three.exit_code != 0 and "exactly two runs" in three.output


def test_progress_bar_shows_the_running_asr_speed_and_eta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safeturn.commands import _running

    screen = io.StringIO()
    monkeypatch.setattr(_running, "console", Console(file=screen, force_terminal=True, width=200))
    monkeypatch.setattr(_running.sys.stdout, "isatty", lambda: True)
    store = RunStore(tmp_path / "safeturn.db")
    settings = EvalSettings(model="scripted:comply", samples=2)
    benign = Sample(
        id="benign",
        source="test",
        harmful=False,
        dialogue=Dialogue(messages=[Message.user("how do I bake bread?")]),
    )
    run_id = start_run(store, [*_items(3), benign], settings)
    _running.execute(store, run_id)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen.getvalue())
    assert "8 of 8 samples to do with scripted:comply (2 draws per item)" in text
    bar = [line for line in text.splitlines() if "8/8" in line][-1]
    assert "dialogues · unsafe 6/6 (100%)" in bar, "benign samples stay out of the tally"
    assert re.search(r"\d+\.\d\d/s", bar) and "eta 0:00:00" in bar
    assert "dialogues/s after loading) · unsafe 6/6 (100%)" in text
