"""`safeturn eval` against hostile input (issue 14, items 13–16): hung servers, bad model
specs, keys in URLs, resumes without --model, bad JSONL lines, a run already being resumed."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safeturn.cli import app
from safeturn.run.lease import Holder
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, Message, Sample, write_jsonl
from tests.data.test_jsonl_faults import write_mixed

runner = CliRunner()


def _data(tmp_path: Path, n: int = 2) -> str:
    samples = [
        Sample(
            id=f"q{i}",
            source="unit",
            harmful=True,
            dialogue=Dialogue(messages=[Message.user(f"question {i}")]),
        )
        for i in range(n)
    ]
    path = tmp_path / "set.jsonl"
    write_jsonl(samples, path)
    return f"jsonl:{path}"


class HungServer:
    """Accepts connections and never answers; counts them (one per attempt of a call)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def spec(self) -> str:
        return f"openai:http://127.0.0.1:{self.port}/v1#m"

    def close(self) -> None:
        self.sock.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def hung() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()


def test_timeout_and_retries_bound_every_call_on_eval_resume_and_chat(
    tmp_path: Path, hung: HungServer
) -> None:
    out = tmp_path / "eval"
    base = ["eval", "--data", _data(tmp_path, 1), "--out", str(out), "--judge", "refusal"]
    result = runner.invoke(
        app, [*base, "--model", hung.spec(), "--timeout", "0.2", "--retries", "0"]
    )
    assert result.exit_code == 0, result.output
    store = RunStore(out / "safeturn.db")
    [run] = store.list_runs()
    [(state, error)] = store.sample_status(run.id).values()
    assert state == "error" and "timed out after 0.2s" in (error or "")
    assert len(hung.accepted) == 1, "one attempt: --retries 0"

    resumed = runner.invoke(
        app, ["eval", "--resume", run.id, "--out", str(out), "--timeout", "0.1", "--retries", "1"]
    )
    assert resumed.exit_code == 0, resumed.output
    [(_, error)] = store.sample_status(run.id).values()
    assert "timed out after 0.1s" in (error or "") and "2 attempts" in (error or "")
    assert len(hung.accepted) == 3, "two more attempts: --retries 1"
    config = store.get_run(run.id).config
    assert not {"timeout", "timeout_s", "retries", "max_retries"} & set(config), "not stored"

    chat = runner.invoke(
        app, ["chat", hung.spec(), "-m", "hi", "--timeout", "0.1", "--retries", "0"]
    )
    assert chat.exit_code == 1 and "timed out after 0.1s" in chat.output
    assert len(hung.accepted) == 4


def test_an_unknown_model_spec_creates_no_run(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    for spec in ("nope:x", "openai:localhost#m", f"hf:{tmp_path}/absent", "scripted:nonsense"):
        result = runner.invoke(
            app, ["eval", "--model", spec, "--data", _data(tmp_path), "--out", str(out)]
        )
        assert result.exit_code == 1 and "error:" in result.output, (spec, result.output)
    demo = runner.invoke(app, ["demo", "--model", "nope:x", "--out", str(out)])
    assert demo.exit_code == 1 and "unknown model spec 'nope:x'" in demo.output
    assert RunStore(out / "safeturn.db").list_runs() == [], "no run left stuck in 'running'"


def test_credentials_in_a_model_url_are_refused_on_every_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-do-not-store"
    spec = f"openai:https://alice:{secret}@api.example/v1#m"
    out = tmp_path / "eval"
    result = runner.invoke(
        app, ["eval", "--model", spec, "--data", _data(tmp_path), "--out", str(out)]
    )
    assert result.exit_code == 1 and "OPENAI_API_KEY" in result.output
    assert secret not in result.output and "alice" not in result.output
    assert RunStore(out / "safeturn.db").list_runs() == []

    chat = runner.invoke(app, ["chat", spec, "-m", "hi"])
    assert chat.exit_code == 1 and "credentials in the URL" in chat.output
    assert secret not in chat.output

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the proxy started"))
    serve = runner.invoke(app, ["guard", "serve", "--upstream", spec, "--no-auth", "--no-db"])
    assert serve.exit_code == 2 and "credentials in the URL" in serve.output
    assert secret not in serve.output

    guarded = f"guard:embedded+{spec}"
    result = runner.invoke(
        app, ["eval", "--model", guarded, "--data", _data(tmp_path), "--out", str(out)]
    )
    assert result.exit_code == 1 and "credentials in the URL" in result.output


def test_resume_needs_no_model_and_refuses_a_different_one(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["--data", _data(tmp_path), "--out", str(out), "--judge", "refusal"]
    assert runner.invoke(app, ["eval", "--model", "scripted:refuse", *args]).exit_code == 0
    [run] = RunStore(out / "safeturn.db").list_runs()
    plain = runner.invoke(app, ["eval", "--resume", run.id, "--out", str(out)])
    assert plain.exit_code == 0, plain.output
    same = runner.invoke(
        app, ["eval", "--resume", run.id, "--model", "scripted:refuse", "--out", str(out)]
    )
    assert same.exit_code == 0, same.output
    other = runner.invoke(
        app, ["eval", "--resume", run.id, "--model", "scripted:comply", "--out", str(out)]
    )
    assert other.exit_code == 2 and "was started with model 'scripted:refuse'" in other.output
    missing = runner.invoke(app, ["eval", "--out", str(out), "--data", _data(tmp_path)])
    assert missing.exit_code == 2 and "--model" in missing.output


def test_bad_jsonl_lines_fail_alone_and_the_run_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    data = f"jsonl:{write_mixed(tmp_path / 'set.jsonl')}"
    result = runner.invoke(
        app,
        ["eval", "--model", "scripted:comply", "--data", data, "--out", str(out), "-j", "refusal"],
    )
    assert result.exit_code == 0, result.output
    assert "item set.jsonl:line-2 fails" in result.output
    store = RunStore(out / "safeturn.db")
    [run] = store.list_runs()
    status = store.sample_status(run.id)
    assert {sid for sid, (state, _) in status.items() if state == "done"} == {"a", "b"}
    failed = {sid: err for sid, (state, err) in status.items() if state == "error"}
    assert sorted(failed) == [f"set.jsonl:line-{n}" for n in (2, 3, 5, 6, 7)]
    assert "set.jsonl:2: invalid JSON" in (failed["set.jsonl:line-2"] or "")
    summary = json.loads((out / f"report-{run.id}.json").read_text())
    assert summary["errors"] == 5


def test_a_second_resume_of_a_busy_run_stops_with_a_clear_message(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["--data", _data(tmp_path), "--out", str(out), "--judge", "refusal"]
    store = RunStore(out / "safeturn.db")
    assert runner.invoke(app, ["eval", "--model", "scripted:refuse", *args]).exit_code == 0
    [run] = store.list_runs()
    parent = os.getppid()  # a live process other than this one holds the run
    store.claim_lease(run.id, Holder("t", socket.gethostname(), parent, time.time()), busy=bool)
    result = runner.invoke(app, ["eval", "--resume", run.id, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert f"run {run.id} is being resumed by another process (pid {parent}" in result.output
    assert "Traceback" not in result.output
