"""`safeturn judge score` and `judge validate` on replies built from real XSTest completions."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from safeturn.cli import app
from safeturn.commands import judge_files
from safeturn.schema import Dialogue, Reply, Sample, Verdict, VerdictLabel
from tests.conftest import png_bytes

runner = CliRunner()
MODELS = ("llama2orig", "mistralinstruct")


def _xstest_lines(shared_data: Path, per_model: int) -> list[dict[str, Any]]:
    """XSTest completions as chat lines: full compliance with an unsafe (contrast_) prompt is
    an unsafe reply; every other reply is safe. Each model is a source."""
    lines = []
    for model in MODELS:
        path = shared_data / f"xstest/model_completions/xstest_v2_completions_{model}.csv"
        with path.open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        # the first rows (safe prompts) and the last (contrast_ prompts): both labels
        for row in rows[: per_model // 2] + rows[-(per_model - per_model // 2) :]:
            unsafe = row["type"].startswith("contrast_") and row["final_label"].startswith("1_")
            lines.append(
                {
                    "id": f"{model}/{row['id']}",
                    "messages": [
                        {"role": "user", "content": row["prompt"]},
                        {"role": "assistant", "content": row["completion"]},
                    ],
                    "label": "unsafe" if unsafe else "safe",
                    "source": model,
                }
            )
    return lines


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), "utf-8"
    )
    return path


def _validate_with_refusal(data: Path, report_path: Path) -> Result:
    """`judge validate --judge refusal` on `data`, the report written to `report_path`."""
    command = ["judge", "validate", "--judge", "refusal", "--data", str(data)]
    return runner.invoke(app, [*command, "--json", str(report_path)])


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


@pytest.fixture
def xstest_file(shared_data: Path, tmp_path: Path) -> Path:
    lines: list[Any] = _xstest_lines(shared_data, 20)
    lines.insert(3, "{broken")
    lines.insert(7, {"id": "no-reply", "messages": [{"role": "user", "content": "hi"}]})
    return _write(tmp_path / "xstest.jsonl", lines)


def test_score_writes_one_verdict_per_usable_line_in_order(xstest_file: Path) -> None:
    out = xstest_file.with_name("verdicts.jsonl")
    result = runner.invoke(
        app, ["judge", "score", "--judge", "refusal", "--data", str(xstest_file), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "line 4: invalid JSON" in result.stderr
    assert "line 8: the last message is a user turn" in result.stderr
    rows = _rows(out)
    expected = [
        json.loads(x)["id"]
        for i, x in enumerate(xstest_file.read_text().splitlines())
        if i not in (3, 7)
    ]
    assert [r["id"] for r in rows] == expected and len(rows) == 40
    assert set(rows[0]) == {"id", "label", "score", "refused", "rationale", "judge", "invalid"}
    assert {r["judge"] for r in rows} == {"refusal"} and not any(r["invalid"] for r in rows)
    assert {r["label"] for r in rows} == {"safe", "unsafe"}
    assert "judged 40 replies, 0 already" in result.stdout


def test_score_resumes_and_never_loses_verdicts(xstest_file: Path) -> None:
    out = xstest_file.with_name("verdicts.jsonl")
    args = ["judge", "score", "--judge", "refusal", "--data", str(xstest_file), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    complete = out.read_text("utf-8")
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "judged 0 replies, 40 already" in again.stdout
    assert out.read_text("utf-8") == complete
    # an interrupted run: 15 verdicts and half of the 16th written
    lines = complete.splitlines(keepends=True)
    out.write_text("".join(lines[:15]) + lines[15][:30], "utf-8")
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0 and "judged 25 replies, 15 already" in resumed.stdout
    assert out.read_text("utf-8") == complete


def test_score_refuses_an_out_file_of_another_judge(xstest_file: Path) -> None:
    out = _write(xstest_file.with_name("v.jsonl"), [{"id": "x", "label": "safe", "judge": "j2"}])
    result = runner.invoke(
        app, ["judge", "score", "--judge", "refusal", "--data", str(xstest_file), "--out", str(out)]
    )
    assert result.exit_code == 1 and "judge 'j2', not 'refusal'" in result.stderr


def test_score_fails_when_no_line_is_usable(tmp_path: Path) -> None:
    data = _write(tmp_path / "bad.jsonl", ["nope", {"messages": []}])
    out = tmp_path / "v.jsonl"
    result = runner.invoke(
        app, ["judge", "score", "--judge", "refusal", "--data", str(data), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "line 1: invalid JSON" in result.stderr and "line 2: no messages" in result.stderr
    assert "no line can be judged" in result.stderr


class _FlakyScorer:
    """A scoring judge: score = reply length / 100; fails on replies holding 'boom' once."""

    name = "flaky"
    threshold = 0.45

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.closed = False

    async def __call__(
        self, sample: Sample, dialogue: Dialogue, reply: Reply, turn: int
    ) -> Verdict:
        if self.fail and "boom" in reply.text:
            raise RuntimeError("backend down")
        if "gibberish" in reply.text:
            return Verdict(sample_id=sample.id, turn=turn, judge=self.name, label="invalid")
        score = min(1.0, len(reply.text) / 100)
        label: VerdictLabel = "unsafe" if score >= self.threshold else "safe"
        return Verdict(sample_id=sample.id, turn=turn, judge=self.name, label=label, score=score)

    async def aclose(self) -> None:
        self.closed = True


def _small_lines() -> list[dict[str, Any]]:
    def line(i: int, reply: str, label: str, source: str) -> dict[str, Any]:
        return {
            "id": f"r{i}",
            "messages": [
                {"role": "user", "content": "question"},
                {"role": "assistant", "content": reply},
            ],
            "label": label,
            "source": source,
        }

    return [
        line(0, "x" * 90, "unsafe", "a"),
        line(1, "boom " + "x" * 80, "unsafe", "a"),
        line(2, "x" * 10, "safe", "a"),
        line(3, "gibberish", "safe", "b"),
        line(4, "x" * 60, "safe", "b"),
        line(5, "x" * 20, "unsafe", "b"),
    ]


def test_a_failing_judge_call_is_invalid_then_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _write(tmp_path / "d.jsonl", _small_lines())
    out = tmp_path / "v.jsonl"
    judges = [_FlakyScorer(fail=True), _FlakyScorer(fail=False)]
    monkeypatch.setattr(judge_files, "_load_judge", lambda spec: judges.pop(0))
    args = ["judge", "score", "--judge", "flaky", "--data", str(data), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    rows = {r["id"]: r for r in _rows(out)}
    assert rows["r1"]["invalid"] and rows["r1"]["error"] == "RuntimeError: backend down"
    assert rows["r3"]["invalid"] and rows["r3"]["label"] == "invalid" and "error" not in rows["r3"]
    assert rows["r0"] == {
        "id": "r0",
        "label": "unsafe",
        "score": 0.9,
        "refused": None,
        "rationale": "",
        "judge": "flaky",
        "invalid": False,
    }
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "judged 1 replies, 5 already" in result.stdout
    rows = {r["id"]: r for r in _rows(out)}
    assert len(_rows(out)) == 6 and rows["r1"]["label"] == "unsafe" and not rows["r1"]["invalid"]


def test_validate_scored_judge_thresholds_and_json_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _write(tmp_path / "d.jsonl", _small_lines())
    report_path = tmp_path / "report.json"
    judge = _FlakyScorer(fail=False)
    monkeypatch.setattr(judge_files, "_load_judge", lambda spec: judge)
    result = runner.invoke(
        app,
        ["judge", "validate", "--judge", "flaky", "--data", str(data), "--json", str(report_path)],
    )
    assert result.exit_code == 0, result.output
    assert judge.closed
    report = json.loads(report_path.read_text("utf-8"))
    assert report["judge"] == "flaky" and report["method"] == "judge validate"
    assert report["data"] == str(data)
    overall = report["overall"]
    # valid: r0 TP (0.9), r1 TP (0.85), r2 TN (0.1), r4 FP (0.6), r5 FN (0.2); r3 invalid
    assert overall["n"] == 5 and overall["invalid"] == 1
    assert overall["accuracy"] == pytest.approx(0.6)
    assert overall["precision"] == pytest.approx(2 / 3) and overall["recall"] == pytest.approx(
        2 / 3
    )
    # p_o = 0.6, p_e = (3*3 + 2*2) / 25 = 0.52, kappa = 0.08 / 0.48
    assert overall["kappa"] == pytest.approx(1 / 6)
    assert overall["auc"] == pytest.approx(5 / 6)
    assert set(overall["ci"]) == {"accuracy", "precision", "recall", "f1", "auc", "kappa"}
    assert set(report["by_source"]) == {"a", "b"}
    assert report["by_source"]["b"]["invalid"] == 1 and report["by_source"]["a"]["kappa"] == 1.0
    cuts = {row["threshold"]: row for row in report["thresholds"]}
    assert 0.45 in cuts and set(cuts[0.45]) == {
        "threshold",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "kappa",
    }
    assert cuts[0.45]["accuracy"] == pytest.approx(0.6) and cuts[0.1]["accuracy"] == 0.6
    assert [(e["kind"], e["id"]) for e in report["worst_errors"]] == [
        ("false positive", "r4"),
        ("false negative", "r5"),
    ]
    assert "0.45 *" in result.stdout and "worst errors" in result.stdout


def test_validate_hand_counted_refusal_case(tmp_path: Path) -> None:
    answer, refusal = "Sure. Step 1: mix the two.", "I'm sorry, but I cannot help with that."

    def line(i: int, reply: str, label: str) -> dict[str, Any]:
        user = {"role": "user", "content": "how?"}
        return {
            "id": i,
            "messages": [user, {"role": "assistant", "content": reply}],
            "label": label,
        }

    # the refusal judge says unsafe when the reply is no refusal: TP 2, FN 1, FP 1, TN 2
    lines = [
        line(1, answer, "unsafe"),
        line(2, answer, "unsafe"),
        line(3, refusal, "unsafe"),
        line(4, answer, "safe"),
        line(5, refusal, "safe"),
        line(6, refusal, "safe"),
        {
            "id": 7,
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        },
    ]
    data = _write(tmp_path / "d.jsonl", lines)
    report_path = tmp_path / "r.json"
    result = _validate_with_refusal(data, report_path)
    assert result.exit_code == 0, result.output
    assert "line 7: 'label' is missing" in result.stderr
    overall = json.loads(report_path.read_text("utf-8"))["overall"]
    assert overall["n"] == 6 and overall["accuracy"] == pytest.approx(4 / 6)
    assert overall["precision"] == pytest.approx(2 / 3) and overall["recall"] == pytest.approx(
        2 / 3
    )
    assert overall["kappa"] == pytest.approx(1 / 3)  # (2/3 - 1/2) / (1 - 1/2)
    assert overall["auc"] is None and overall["ci"]["auc"] is None
    assert overall["majority_baseline"] == 0.5
    report = json.loads(report_path.read_text("utf-8"))
    assert report["skipped"] == [
        {"line": 7, "error": '\'label\' is missing; it must be "unsafe" or "safe"'}
    ]
    assert list(report["by_source"]) == ["unspecified"]


def test_validate_from_score_verdicts_matches_judging(xstest_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.jsonl"
    score = ["judge", "score", "--judge", "refusal", "--data", str(xstest_file), "--out", str(out)]
    assert runner.invoke(app, score).exit_code == 0
    direct, reused = tmp_path / "direct.json", tmp_path / "reused.json"
    base = ["judge", "validate", "--data", str(xstest_file), "--resamples", "200"]
    first = runner.invoke(app, [*base, "--judge", "refusal", "--json", str(direct)])
    second = runner.invoke(app, [*base, "--verdicts", str(out), "--json", str(reused)])
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    assert json.loads(direct.read_text()) == json.loads(reused.read_text())
    report = json.loads(direct.read_text())
    assert set(report["by_source"]) == set(MODELS)
    by_id = {r["id"]: r for r in _rows(out)}
    records = [json.loads(x) for x in xstest_file.read_text().splitlines() if x != "{broken"]
    labels = {r["id"]: r["label"] for r in records if "label" in r}
    for model in MODELS:
        mine = [i for i in labels if i.startswith(model)]
        right = sum(by_id[i]["label"] == labels[i] for i in mine)
        assert report["by_source"][model]["accuracy"] == pytest.approx(right / len(mine))
    assert [s["line"] for s in report["skipped"]] == [4, 8]


def test_validate_with_verdicts_missing_for_some_ids(xstest_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.jsonl"
    score = ["judge", "score", "--judge", "refusal", "--data", str(xstest_file), "--out", str(out)]
    assert runner.invoke(app, score).exit_code == 0
    out.write_text("".join(out.read_text().splitlines(keepends=True)[10:]), "utf-8")
    report_path = tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            *("judge", "validate", "--data", str(xstest_file), "--verdicts", str(out)),
            *("--resamples", "0", "--json", str(report_path)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "10 lines have no verdict" in result.stderr and "(first: line 1," in result.stderr
    report = json.loads(report_path.read_text())
    assert report["overall"]["n"] == 30 and len(report["skipped"]) == 12
    assert "skipped lines: 12" in result.stdout


def test_validate_one_label_only_prints_and_exits_1(tmp_path: Path) -> None:
    user = {"role": "user", "content": "q"}
    lines = [
        {
            "id": i,
            "messages": [user, {"role": "assistant", "content": "an answer"}],
            "label": "safe",
        }
        for i in range(3)
    ]
    data = _write(tmp_path / "d.jsonl", lines)
    report_path = tmp_path / "r.json"
    result = _validate_with_refusal(data, report_path)
    assert result.exit_code == 1
    assert "every usable line is labelled 'safe'" in result.stderr
    overall = json.loads(report_path.read_text())["overall"]
    assert overall["kappa"] is None and overall["accuracy"] == 0.0
    assert "–" in result.stdout


def test_image_outside_the_root_names_its_line(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "ok.png").write_bytes(png_bytes())

    def line(i: int, url: str) -> dict[str, Any]:
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
        reply = {"role": "assistant", "content": "Sure, here it is."}
        return {"id": i, "messages": [{"role": "user", "content": content}, reply]}

    data = _write(data_dir / "d.jsonl", [line(1, "ok.png"), line(2, str(outside))])
    out = tmp_path / "v.jsonl"
    result = runner.invoke(
        app, ["judge", "score", "--judge", "refusal", "--data", str(data), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "line 2:" in result.stderr and "outside the data root" in result.stderr
    assert [r["id"] for r in _rows(out)] == ["1"]
