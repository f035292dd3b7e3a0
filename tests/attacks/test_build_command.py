"""`safeturn build` end to end on the real FigStep SafeBench-Tiny seeds."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from safeturn.attacks import STRATEGIES
from safeturn.commands._errors import ErrorReportingGroup
from safeturn.commands.build import build_command
from safeturn.schema import read_jsonl

runner = CliRunner()
app = typer.Typer(cls=ErrorReportingGroup)  # errors reported as the real CLI does


@app.callback()
def _group() -> None:
    """Keep `build` a sub-command, as in the real CLI."""


app.command("build")(build_command)


@pytest.fixture
def tiny_csv(shared_data: Path) -> Path:
    return shared_data / "figstep" / "SafeBench-Tiny.csv"


def test_all_strategies_and_turns_1_to_8(tiny_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "build" / "attacks.jsonl"
    args = ["build", "--seeds-csv", str(tiny_csv), "--strategy", "all"]
    result = runner.invoke(app, [*args, "--turns", "1,2,3,4,5,6,7,8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 2400 samples" in result.output
    samples = list(read_jsonl(out))
    assert len(samples) == 50 * 6 * 8
    counts = Counter((s.strategy, s.turns) for s in samples)
    assert counts == {(name, n): 50 for name in STRATEGIES for n in range(1, 9)}
    assert len({s.id for s in samples}) == len(samples)
    for sample in samples:
        assert sample.dialogue.n_turns == sample.turns
        assert sample.dialogue.messages[-1].role == "user"
    # images are PNG files beside the JSONL, referenced relative to it, each written once
    images = sorted((out.parent / "images").iterdir())
    assert len(images) == 100  # 50 plain renderings + 50 with the numbered list
    raw = out.read_text(encoding="utf-8")
    assert '"path":"images/' in raw and "base64" not in raw
    typography = next(s for s in samples if s.strategy == "typography")
    typography.check_images()
    # the summary table lists every strategy with its per-turn counts
    for name in STRATEGIES:
        assert name in result.output


def test_same_seed_gives_the_same_file(tiny_csv: Path, tmp_path: Path) -> None:
    outputs = []
    for run, seed in enumerate(("7", "7", "8")):
        out = tmp_path / f"r{run}" / "a.jsonl"
        args = ["build", "--seeds-csv", str(tiny_csv), "--limit", "4", "--out", str(out)]
        result = runner.invoke(app, [*args, "--seed", seed, "-s", "escalation,fake-compliance"])
        assert result.exit_code == 0, result.output
        outputs.append(out.read_text(encoding="utf-8"))
    assert outputs[0] == outputs[1] != outputs[2]


def test_refusing_attacker_falls_back_and_is_reported(tiny_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.jsonl"
    args = ["build", "--seeds-csv", str(tiny_csv), "--limit", "2", "--turns", "2"]
    result = runner.invoke(app, [*args, "--attacker", "scripted:refuse", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "fallbacks" in result.output
    samples = list(read_jsonl(out))
    assert len(samples) == 2 * 6
    assert all(s.metadata["attacker_fallback"] for s in samples)
    assert all(s.metadata["attacker_attempts"] == 3 for s in samples)


@pytest.mark.skipif(importlib.util.find_spec("safeturn.data") is None, reason="no data package")
def test_data_spec_seeds_keep_their_images(tiny_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.jsonl"
    args = ["build", "--data", f"figstep:{tiny_csv}", "--limit", "3", "--turns", "1,4"]
    result = runner.invoke(app, [*args, "-s", "image-grounding", "--out", str(out)])
    assert result.exit_code == 0, result.output
    samples = list(read_jsonl(out))
    assert len(samples) == 6
    figstep_image = tiny_csv.parent / "images" / "SafeBench-Tiny" / "query_ForbidQI_1_1_6.png"
    first = samples[0].dialogue.images[0]
    assert first.read_bytes() == figstep_image.read_bytes()  # copied next to the JSONL
    assert first.path is not None and first.path.startswith(str(out.parent / "images"))


def test_bad_arguments_fail_clearly(tiny_csv: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "a.jsonl")
    result = runner.invoke(app, ["build", "--seeds-csv", str(tiny_csv), "-s", "x", "--out", out])
    assert result.exit_code == 1
    assert "unknown attack strategy 'x'" in result.output and "typography" in result.output
    result = runner.invoke(app, ["build", "--seeds-csv", str(tiny_csv), "--turns", "9", "-o", out])
    assert result.exit_code == 1 and "between 1 and 8" in result.output
    result = runner.invoke(app, ["build", "--out", out])
    assert result.exit_code == 2 and "exactly one of --data or --seeds-csv" in result.output
