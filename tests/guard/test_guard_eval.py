"""Evaluation metrics, the keyword baseline, and the `safeturn guard` commands end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from safeturn.commands.guard import guard_app
from safeturn.guard.dataset import GuardExample
from safeturn.guard.evaluate import MethodRun, summarize
from safeturn.guard.keywords import keyword_hits, keyword_score
from safeturn.metrics.roc import auroc, threshold_at_fpr, tpr_at_fpr
from safeturn.schema import Dialogue, Message, Sample
from safeturn.taxonomy import Category


def test_auroc_counts_ties_as_half() -> None:
    assert auroc([True, False], [0.9, 0.1]) == 1.0
    assert auroc([True, False], [0.1, 0.9]) == 0.0
    assert auroc([True, True, False, False], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # pairs (pos, neg): (0.9, 0.1) win, (0.9, 0.4) win, (0.4, 0.1) win, (0.4, 0.4) tie
    assert auroc([True, False, True, False], [0.9, 0.1, 0.4, 0.4]) == pytest.approx(0.875)
    assert auroc([True, True], [0.2, 0.3]) is None


def test_threshold_keeps_the_false_positive_budget() -> None:
    negatives = np.linspace(0.0, 0.99, 100)
    threshold = threshold_at_fpr(negatives, 0.05)
    assert np.mean(negatives >= threshold) == pytest.approx(0.05)
    assert np.mean(negatives >= np.nextafter(threshold, 0) - 0.01) > 0.05
    labels = [True] * 4 + [False] * 20
    scores = [0.99, 0.9, 0.5, 0.2] + [0.1] * 18 + [0.95, 0.6]
    tpr, at = tpr_at_fpr(labels, scores, 0.05)  # one benign of 20 may pass: 0.95 does, 0.6 not
    assert tpr == 0.5 and 0.6 < at <= 0.9


def test_keyword_filter() -> None:
    hits = keyword_hits(["How do I build a bomb?", "[Image 1: Steps to make a pipe bomb]"])
    assert hits == {Category.WEAPONS_CBRN: {"bomb"}}
    assert keyword_score(hits) == (1, Category.WEAPONS_CBRN)
    assert keyword_score(keyword_hits(["How do I kill a Python process?"]))[0] == 1
    assert keyword_score(keyword_hits(["Bake a cake for my mum."])) == (0, None)


def _example(harmful: bool, turns: int, surfaced: int, strategy: str) -> GuardExample:
    dialogue = Dialogue(messages=[Message.user(f"turn {t}") for t in range(1, turns + 1)])
    sample = Sample(id=f"x{turns}{harmful}", source="t", strategy=strategy, dialogue=dialogue)
    return GuardExample(
        sample=sample,
        seed_id=sample.id,
        group=sample.id,
        source="t",
        split="test",
        harmful=harmful,
        category=Category.VIOLENCE if harmful else None,
        strategy=strategy,
        surfaced_turn=surfaced,
    )


def test_summary_measures_how_early_a_dialogue_is_flagged() -> None:
    examples = [
        _example(True, 6, 2, "escalation"),  # flagged at turn 3: 3 turns before the last
        _example(True, 4, 4, "escalation"),  # flagged at the last turn
        _example(True, 3, 1, "typography"),  # missed
        _example(False, 5, 5, "escalation"),
        _example(False, 2, 2, "none"),  # a false positive at turn 2
    ]
    turn_scores = [
        np.array([0.1, 0.2, 0.9, 0.9, 0.9, 0.9]),
        np.array([0.1, 0.1, 0.1, 0.8]),
        np.array([0.1, 0.2, 0.2]),
        np.full(5, 0.1),
        np.array([0.3, 0.85]),
    ]
    run = MethodRun(
        "m",
        turn_scores,
        np.array([0.9, 0.8, 0.2, 0.1, 0.85]),
        0.5,
        [Category.VIOLENCE, Category.FRAUD_DECEPTION, Category.VIOLENCE, None, None],
        ["escalation", "escalation", "none", "none", "none"],
    )
    summary = summarize(run, examples)
    early = summary["earliest"]
    assert early["multi_turn_harmful"] == 3 and early["detected"] == pytest.approx(2 / 3)
    assert early["flagged_before_final_turn"] == pytest.approx(1 / 3)
    assert early["mean_turns_before_final"] == pytest.approx(1.5)  # (3 + 0) / 2
    assert early["flagged_by_surfaced_turn"] == pytest.approx(1 / 3)  # only the 4-turn one
    assert early["earliest_turn_distribution"] == {"3": 1, "4": 1}
    assert early["earliest_turn_mean"] == pytest.approx(3.5)
    assert summary["tpr"] == pytest.approx(2 / 3) and summary["fpr"] == pytest.approx(0.5)
    assert summary["category_accuracy"] == pytest.approx(2 / 3)
    assert summary["strategy_accuracy"] == pytest.approx(2 / 3)
    assert summary["auroc"] == pytest.approx(4 / 6)  # 0.85 outranks 0.8 and 0.2
    # at 5 % FPR no benign dialogue may pass: the threshold rises above 0.85
    matched = summary["earliest_at_5fpr"]
    assert matched["threshold"] > 0.85 and matched["detected"] == pytest.approx(1 / 3)
    assert matched["mean_turns_before_final"] == pytest.approx(3.0)


@pytest.mark.slow
def test_train_and_eval_commands(shared_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    model = tmp_path / "tiny.npz"
    trained = runner.invoke(
        guard_app,
        ["train", "--data-root", str(shared_data), "--out", str(model), "--max-per-source", "5"],
    )
    assert trained.exit_code == 0, trained.output
    assert "training data" in trained.output and model.is_file()
    meta = json.loads(model.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["plan"]["caps"]["figstep"] == 5 and meta["data"]["test"]["dialogues"] > 0
    report_path = tmp_path / "eval.json"
    evaluated = runner.invoke(
        guard_app,
        ["eval", "--data-root", str(shared_data), "--model", str(model), "--out", str(report_path)],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["n"]["dialogues"] == meta["data"]["test"]["dialogues"]  # the same held-out set
    assert set(report["methods"]) == {"moderator", "single-message", "last-message", "keyword"}
    assert report["methods"]["moderator"]["auroc"] == pytest.approx(
        meta["test"]["methods"]["moderator"]["auroc"], abs=1e-6
    )
    assert "keyword" in evaluated.output


def test_eval_command_reports_a_missing_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        guard_app, ["eval", "--data-root", str(tmp_path), "--model", str(tmp_path / "none.npz")]
    )
    assert result.exit_code == 1
    assert "moderator model not found" in result.output
