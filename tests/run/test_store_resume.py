from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safeturn.judges import load_judge
from safeturn.models.scripted import BUILTIN_SCRIPTS, ScriptedModel
from safeturn.redact import scrub_secrets
from safeturn.run.calls import RecordedModel, call_context
from safeturn.run.engine import EvalSettings, execute_run, start_run, unfinished_samples
from safeturn.run.results import load_results
from safeturn.run.store import RunStore, request_hash
from safeturn.schema import Dialogue, GenerateParams, ImagePart, Message, Sample, Verdict
from tests.conftest import REPO_ROOT, png_bytes
from tests.databases import Database


def _samples(n: int, turns: int = 2) -> list[Sample]:
    out = []
    for i in range(n):
        messages = [Message.user(f"turn 1 of {i}", images=[ImagePart(data=png_bytes())])]
        messages += [Message.user(f"turn {t} of {i}") for t in range(2, turns + 1)]
        out.append(
            Sample(
                id=f"s{i}",
                source="unit",
                harmful=i % 2 == 0,
                dialogue=Dialogue(messages=messages),
            )
        )
    return out


def test_request_hash_depends_on_content_not_on_image_location(tmp_path: Path) -> None:
    params = GenerateParams(max_tokens=8)
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes())
    by_path = Dialogue(messages=[Message.user("hi", images=[ImagePart(path=str(path))])])
    by_bytes = Dialogue(messages=[Message.user("hi", images=[ImagePart(data=png_bytes())])])
    assert request_hash("m", by_path, params) == request_hash("m", by_bytes, params)
    assert request_hash("m", by_path, params) != request_hash("other", by_path, params)
    assert request_hash("m", by_path, params) != request_hash(
        "m", by_path, GenerateParams(max_tokens=9)
    )


def test_secrets_never_reach_the_database(database: Database) -> None:
    config = {
        "model": "openai:x#y",
        "api_key": "sk-123",
        "auth": {"Token": "t", "ok": 1, "client-secret": "s"},
        "params": {"max_tokens": 96},
        "api_key_env": "OPENAI_API_KEY",
    }
    assert scrub_secrets(config) == {
        "model": "openai:x#y",
        "auth": {"ok": 1},
        "params": {"max_tokens": 96},
        "api_key_env": "OPENAI_API_KEY",
    }
    nested = {
        "judges": [{"api_key": "sk-999", "name": "j"}],
        "openaiApiKey": "sk-888",
        "model": "openai:https://user:sk-777@host.example/v1#m",
    }
    assert scrub_secrets(nested) == {
        "judges": [{"name": "j"}],
        "model": "openai:https://host.example/v1#m",
    }
    store = RunStore(database.target)
    run_id = store.create_run({**config, **nested})
    assert "sk-123" not in str(store.get_run(run_id).config)
    raw = database.stored_bytes()
    assert b"OPENAI_API_KEY" in raw, "the database was really read"
    for secret in (b"sk-123", b"sk-999", b"sk-888", b"sk-777"):
        assert secret not in raw


async def test_live_run_records_every_turn_and_verdict(database: Database) -> None:
    store = RunStore(database.target)
    settings = EvalSettings(model="scripted:comply", params=GenerateParams(max_tokens=64))
    run_id = start_run(store, _samples(4, turns=3), settings)
    model = ScriptedModel(BUILTIN_SCRIPTS["comply"], name="scripted:comply")
    await execute_run(store, run_id, model, [load_judge("refusal")])
    calls = store.calls(run_id)
    assert len(calls) == 12 and model.calls == 12
    # live mode: turn 2's request carries the model's own turn-1 reply as history
    turn2 = next(c for c in calls if c.sample_id == "s0" and c.turn == 2)
    assert turn2.request_hash != next(c for c in calls if c.turn == 1).request_hash
    results = load_results(store, run_id)
    assert results.attack_success().hits == 2 and results.attack_success().total == 2
    assert results.over_refusal().total == 2 and results.over_refusal().hits == 0
    assert all(o.earliest_unsafe_turn == 1 for o in results.outcomes if o.sample.harmful)
    assert store.get_run(run_id).status == "done"


async def test_replay_mode_answers_only_the_final_turn(database: Database) -> None:
    store = RunStore(database.target)
    sample = Sample(
        id="r1",
        source="unit",
        harmful=True,
        dialogue=Dialogue(
            messages=[Message.user("q1"), Message.assistant("fixed"), Message.user("q2")]
        ),
    )
    run_id = start_run(store, [sample], EvalSettings(model="scripted:refuse", mode="replay"))
    model = ScriptedModel(BUILTIN_SCRIPTS["refuse"], name="scripted:refuse")
    await execute_run(store, run_id, model, [load_judge("refusal")])
    (call,) = store.calls(run_id)
    assert call.turn == 2
    (verdict,) = store.verdicts(run_id)
    assert verdict.label == "safe" and verdict.refused is True


async def test_a_failing_sample_is_recorded_and_the_run_goes_on(
    database: Database, tmp_path: Path
) -> None:
    store = RunStore(database.target)
    samples = _samples(3)
    broken = samples[1].model_copy(
        update={
            "dialogue": Dialogue(
                messages=[
                    Message.user("a", images=[ImagePart(path=str(tmp_path / "gone.png"))]),
                    Message.user("b"),
                ]
            )
        }
    )
    run_id = start_run(store, [samples[0], broken, samples[2]], EvalSettings(model="m"))
    model = ScriptedModel(BUILTIN_SCRIPTS["echo"], name="m")
    await execute_run(store, run_id, model, [load_judge("refusal")])
    status = store.sample_status(run_id)
    assert status["s0"][0] == "done" and status["s2"][0] == "done"
    assert status["s1"][0] == "error"
    assert "s1" not in {c.sample_id for c in store.calls(run_id)}
    assert "gone.png" in (status["s1"][1] or "")


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_loss(database: Database) -> None:
    db = database.target
    store = RunStore(db)
    samples = _samples(10)
    settings = EvalSettings(model="scripted:comply", concurrency=2)
    run_id = start_run(store, samples, settings)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.run._resume_worker", str(db), run_id],
        cwd=REPO_ROOT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while len(store.calls(run_id)) < 6:
        assert worker.poll() is None, "worker ended before it could be killed"
        assert time.monotonic() < deadline, "worker made no progress"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    before = {(c.sample_id, c.turn): c.request_hash for c in store.calls(run_id)}
    assert 6 <= len(before) < 20, "the kill should land mid-run"
    assert store.get_run(run_id).status == "running"

    import asyncio

    model = ScriptedModel(BUILTIN_SCRIPTS["comply"], name="scripted:comply")
    asyncio.run(execute_run(store, run_id, model, [load_judge("refusal")]))

    after = store.calls(run_id)
    keys = [(c.sample_id, c.turn) for c in after]
    assert len(keys) == len(set(keys)) == 20, "every turn once, none twice"
    assert model.calls == 20 - len(before), "completed calls were not redone"
    for c in after:
        if (c.sample_id, c.turn) in before:
            assert before[(c.sample_id, c.turn)] == c.request_hash
    verdicts = store.verdicts(run_id)
    assert len({(v.sample_id, v.turn) for v in verdicts}) == 20 == len(verdicts)
    assert all(state == "done" for state, _ in store.sample_status(run_id).values())
    assert store.get_run(run_id).status == "done"


async def test_identical_dialogues_in_different_samples_each_get_their_reply(
    database: Database,
) -> None:
    store = RunStore(database.target)
    same = Dialogue(messages=[Message.user("How do I pick a lock?")])
    samples = [Sample(id=f"dup{i}", source="t", harmful=True, dialogue=same) for i in range(3)]
    run_id = start_run(store, samples, EvalSettings(model="scripted:comply", mode="replay"))
    model = ScriptedModel(BUILTIN_SCRIPTS["comply"], name="scripted:comply")
    await execute_run(store, run_id, model, [load_judge("refusal")])
    results = load_results(store, run_id)
    assert [len(o.turns) for o in results.outcomes] == [1, 1, 1]
    assert results.attack_success().total == 3


async def test_recorded_model_repeats_reach_the_model_and_replay_in_order(
    database: Database,
) -> None:
    store = RunStore(database.target)
    run_id = store.create_run({}, kind="synth")
    answers = iter(["I'm sorry, I can't.", '{"turns": []}'])
    inner = ScriptedModel(lambda _d: next(answers), name="scripted:seq")
    recorded = RecordedModel(inner, store, run_id, role="attacker")
    ask = Dialogue(messages=[Message.user("write the dialogue")])
    with call_context("seed-1"):
        first = await recorded.generate(ask, GenerateParams())
        second = await recorded.generate(ask, GenerateParams())
    assert (first.text, second.text) == ("I'm sorry, I can't.", '{"turns": []}')
    assert inner.calls == 2
    replay_inner = ScriptedModel(lambda _d: "should not be called", name="scripted:seq")
    replay = RecordedModel(replay_inner, store, run_id, role="attacker")
    with call_context("seed-1"):
        texts = [(await replay.generate(ask, GenerateParams())).text for _ in range(2)]
    assert texts == [first.text, second.text] and replay_inner.calls == 0


def test_model_specs_with_url_credentials_are_refused_without_echoing_them() -> None:
    from safeturn.errors import ModelSpecError
    from safeturn.models import load_model

    with pytest.raises(ModelSpecError, match="OPENAI_API_KEY") as info:
        load_model("openai:https://user:sk-555@host.example/v1#m")
    assert "sk-555" not in str(info.value) and "user" not in str(info.value)


class _FlakyJudge:
    """A judge whose first answer on turn 2 of every sample is unreadable, then valid."""

    name = "flaky"
    threshold = None

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def aclose(self) -> None:
        pass

    async def __call__(
        self, sample: Sample, dialogue: Dialogue, reply: object, turn: int
    ) -> Verdict:
        first = (sample.id, turn) not in self.asked
        self.asked.append((sample.id, turn))
        label = "invalid" if first and turn == 2 else "unsafe"
        return Verdict(sample_id=sample.id, turn=turn, judge=self.name, label=label)


async def test_resume_rejudges_invalid_verdicts_without_new_model_calls(database: Database) -> None:
    store = RunStore(database.target)
    settings = EvalSettings(model="scripted:comply", judges=["refusal"])
    run_id = start_run(store, _samples(3, turns=2), settings)
    model = ScriptedModel(BUILTIN_SCRIPTS["comply"], name="scripted:comply")
    judge = _FlakyJudge()
    await execute_run(store, run_id, model, [judge])
    labels = {(v.sample_id, v.turn): v.label for v in store.verdicts(run_id)}
    assert [labels[f"s{i}", 2] for i in range(3)] == ["invalid"] * 3
    assert unfinished_samples(store, run_id) == {"s0", "s1", "s2"}
    assert model.calls == 6

    await execute_run(store, run_id, model, [judge])  # the resume

    assert model.calls == 6  # every reply came from the database
    labels = {(v.sample_id, v.turn): v.label for v in store.verdicts(run_id)}
    assert set(labels.values()) == {"unsafe"} and len(labels) == 6
    # only the invalid turn-2 verdicts were asked again; the valid turn-1 ones were reused
    assert sorted(judge.asked).count(("s0", 1)) == 1
    assert sorted(judge.asked).count(("s0", 2)) == 2
    assert unfinished_samples(store, run_id) == set()
    store.close()
