"""Validation cards: reading them (tolerantly, with errors that name the file) and their line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from safeturn.errors import PrerequisiteError, SchemaError
from safeturn.judges.card import (
    CARDS_DIR,
    JudgeCard,
    card_for,
    card_summary,
    comparison_warnings,
    headline_figure,
    load_card,
    packaged_card,
    unmatched_cards,
)
from safeturn.judges.refusal import detect_refusal
from safeturn.judges.validation import JudgedReply, validation_report

CARD: dict[str, Any] = {
    "judge": "classifier",
    "data": "held-out sources of ../shared/data",
    "method": "leave-one-source-out",
    "overall": {
        "n": 1234,
        "positive_rate": 0.41,
        "accuracy": 0.86,
        "kappa": 0.712,
        "auc": 0.903,
        "majority_baseline": 0.59,
        "invalid": 0,
        "ci": {"kappa": [0.651, 0.774], "auc": [0.88, 0.92], "f1": None},
    },
    "by_source": {"xstest": {"n": 300, "kappa": 0.62}, "jailbreakbench": {"kappa": 0.8}},
    "command": "safeturn judge validate --judge classifier --data all.jsonl --json card.json",
    "thresholds": [{"threshold": 0.5, "kappa": 0.7}],
}


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_full_card_loads_keeps_extra_keys_and_summarises(tmp_path: Path) -> None:
    card = load_card(write(tmp_path / "card.json", CARD))
    assert card.origin == str(tmp_path / "card.json")
    assert card.overall.interval("kappa") == (0.651, 0.774)
    assert card.overall.interval("f1") is None
    assert card.model_dump()["thresholds"] == [{"threshold": 0.5, "kappa": 0.7}]
    assert card_summary("classifier", card) == (
        "classifier: κ 0.71 [0.65, 0.77], AUC 0.90 on 1,234 labelled replies "
        "(leave-one-source-out; worst source xstest κ 0.62)"
    )
    assert headline_figure(card) == "κ 0.71 [0.65, 0.77]"


def test_missing_and_null_metrics_are_tolerated(tmp_path: Path) -> None:
    sparse = {"judge": "refusal", "overall": {"accuracy": 0.5, "majority_baseline": 0.7}}
    card = load_card(write(tmp_path / "sparse.json", sparse))
    assert card.overall.kappa is None and card.overall.ci is None and card.by_source == {}
    # no κ or AUC: accuracy speaks, with the baseline it fails to beat; no method is said
    assert card_summary("refusal", card) == (
        "refusal: accuracy 0.50 (method not stated; accuracy below the majority baseline 0.70)"
    )
    assert headline_figure(card) == "accuracy 0.50"
    # NaN (Python's json writes it) reads as null, and a one-sided interval is no interval
    nan = '{"judge": "j", "overall": {"kappa": NaN, "auc": 0.8, "ci": {"auc": [0.7, null]}}}'
    (tmp_path / "nan.json").write_text(nan, encoding="utf-8")
    card = load_card(tmp_path / "nan.json")
    assert card.overall.kappa is None and card.overall.interval("auc") is None
    assert card_summary("j", card) == "j: AUC 0.80 (method not stated)"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"judge": "x",\n "overall": {"kappa": 0.5,}}', r"bad\.json:2:27: not valid JSON"),
        ("[1, 2]", r"bad\.json: expected a JSON object, got list"),
        ('{"overall": {}}', r"bad\.json: not a validation card \(judge: Field required"),
        ('{"judge": "x", "overall": {"kappa": "high"}}', r"overall\.kappa: Input should be"),
        ('{"judge": "x", "overall": {"n": -3}}', r"overall\.n: Input should be greater"),
        ('{"judge": "x", "overall": {}, "by_source": {"s": {"ci": {"auc": [1]}}}}', "by_source"),
    ],
)
def test_malformed_card_is_an_error_naming_the_file(
    tmp_path: Path, content: str, match: str
) -> None:
    (tmp_path / "bad.json").write_text(content, encoding="utf-8")
    with pytest.raises(SchemaError, match=match):
        load_card(tmp_path / "bad.json")


def test_missing_card_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteError, match=r"judge card .*nowhere\.json: cannot read"):
        load_card(tmp_path / "nowhere.json")


def test_no_card_line_says_how_to_make_one() -> None:
    assert card_summary("refusal", None) == (
        "refusal: no validation card — run `safeturn judge validate --judge refusal "
        "--data FILE --json card.json` and pass --judge-card card.json"
    )
    assert headline_figure(None) == "no card"


def test_given_card_wins_over_the_shipped_one_and_specs_never_name_files(
    tmp_path: Path,
) -> None:
    shipped = write(tmp_path / "classifier.json", {**CARD, "method": "shipped"})
    assert packaged_card("classifier", tmp_path) is not None
    assert packaged_card("refusal", tmp_path) is None
    assert packaged_card("../classifier", tmp_path) is None
    assert packaged_card("safemt:openai:http://h/v1#m", tmp_path) is None
    card = card_for("classifier", (), tmp_path)
    assert card is not None and card.method == "shipped"
    assert card.origin == "shipped with safeturn: classifier.json"
    given = load_card(write(tmp_path / "mine.json", CARD))
    other = JudgeCard.model_validate({"judge": "refusal", "overall": {}})
    assert card_for("classifier", [other, given], tmp_path) is given
    assert card_for("refusal", [other, given], tmp_path) is other
    assert shipped.exists()


def test_every_shipped_card_loads() -> None:
    for path in sorted(CARDS_DIR.glob("*.json")):
        assert load_card(path).judge == path.stem, path


def test_cards_for_other_judges_and_mixed_judges_are_reported(tmp_path: Path) -> None:
    given = load_card(write(tmp_path / "c.json", CARD))
    (warning,) = unmatched_cards([given], ["refusal"])
    assert "c.json is for judge 'classifier', not 'refusal': not shown" in warning
    assert unmatched_cards([given], ["refusal", "classifier"]) == []
    warnings = comparison_warnings(["classifier", "refusal"], [given, None])
    assert len(warnings) == 2
    assert "different judges (classifier, refusal)" in warnings[0]
    assert warnings[1].startswith("judge refusal has no validation card")
    assert comparison_warnings(["classifier", "classifier"], [given, given]) == []


def _xstest_replies(folder: Path) -> list[JudgedReply]:
    """XSTest completions to unsafe prompts; gold unsafe = the annotators' full compliance."""
    judged = []
    for path in sorted((folder / "model_completions").glob("*.csv")):
        model = path.stem.removeprefix("xstest_v2_completions_")
        with path.open(encoding="utf-8", newline="") as fh:
            for line, row in enumerate(csv.DictReader(fh), start=2):
                if not row["type"].startswith("contrast_"):
                    continue
                refused = detect_refusal(row["completion"])[0]
                gold = row["final_label"] == "1_full_compliance"
                judged.append(JudgedReply(row["id"], model, gold, not refused, line=line))
    return judged


def test_judge_validate_report_of_real_replies_is_a_card(shared_data: Path, tmp_path: Path) -> None:
    """The JSON `judge validate --json` writes (here: the refusal rule on XSTest) is a card."""
    judged = _xstest_replies(shared_data / "xstest")
    report = validation_report(judged, judge="refusal", data="xstest", resamples=200)
    card = load_card(write(tmp_path / "refusal.json", report))
    assert card.overall.n == len(judged) == 600
    assert set(card.by_source) == {"llama2new", "llama2orig", "mistralinstruct"}
    kappa, interval = card.overall.kappa, card.overall.interval("kappa")
    assert kappa is not None and interval is not None and interval[0] <= kappa <= interval[1]
    # both Llama 2 models refused every unsafe prompt: κ is undefined on one gold label
    assert [card.by_source[s].kappa is None for s in sorted(card.by_source)] == [True, True, False]
    worst = card.by_source["mistralinstruct"].kappa
    assert worst is not None and worst < kappa
    line = card_summary("refusal", card)
    assert line.startswith(f"refusal: κ {kappa:.2f} [")
    assert line.endswith(
        f"on 600 labelled replies (judge validate; worst source mistralinstruct κ {worst:.2f})"
    )
    assert "AUC" not in line  # the refusal rule gives no score
