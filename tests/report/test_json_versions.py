"""Every JSON file a report writes names its layout: `schema_version`, first."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from safeturn.judges.pairwise import ScorePairwiseJudge, judge_pairs
from safeturn.report.compare import (
    before_after,
    before_after_json,
    match_runs,
    pairwise_report,
    write_pairwise_json,
)
from safeturn.report.terminal import write_summary_json
from safeturn.report.versions import (
    BEFORE_AFTER_SCHEMA_VERSION,
    PAIRWISE_SCHEMA_VERSION,
    SUMMARY_SCHEMA_VERSION,
)
from tests.report.test_compare import Harm, _pair


def test_the_summary_json_starts_with_its_schema_version(tmp_path: Path) -> None:
    a, _ = _pair(tmp_path, "replay")
    text = write_summary_json(a, tmp_path / "summary.json").read_text(encoding="utf-8")
    summary = json.loads(text)
    assert SUMMARY_SCHEMA_VERSION == 1
    assert next(iter(summary)) == "schema_version"
    assert summary["schema_version"] == SUMMARY_SCHEMA_VERSION
    assert summary["run_id"] == a.run_id and summary["samples"] == 3, "the real summary"


def test_pairwise_and_before_after_json_carry_their_versions(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, "replay")
    match = match_runs(a, b)
    verdicts = asyncio.run(judge_pairs(ScorePairwiseJudge(Harm()), match.requests))
    report = pairwise_report(a, b, "harm", match, verdicts)
    pairwise = json.loads(write_pairwise_json(report, tmp_path / "pw.json").read_text())
    assert next(iter(pairwise)) == "schema_version"
    assert pairwise["schema_version"] == PAIRWISE_SCHEMA_VERSION == 1
    compared = before_after_json(before_after(a, b, n_resamples=20, pairwise=report))
    assert next(iter(compared)) == "schema_version"
    assert compared["schema_version"] == BEFORE_AFTER_SCHEMA_VERSION == 1
    assert compared["pairwise"]["schema_version"] == PAIRWISE_SCHEMA_VERSION
    assert compared["seed_groups"] == 2, "s2 and s3: the samples both runs hold"
