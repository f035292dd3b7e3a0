from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from typer.testing import CliRunner

from safeturn.cli import app
from safeturn.run.store import RunStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An eval run over 2 strategies × 3 turn counts, and its HTML report."""
    data = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "figstep"
    if not data.is_dir():
        pytest.skip("../shared/data/figstep not found")
    out = tmp_path_factory.mktemp("report")
    args = [
        "eval",
        "--model",
        "scripted:comply",
        "--data",
        f"figstep:{data / 'SafeBench-Tiny.csv'}",
    ]
    args += ["--limit", "4", "-s", "escalation", "-s", "typography", "--turns", "1,2,4"]
    args += ["--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = RunStore(out / "safeturn.db").list_runs()
    return out / f"report-{run.id}.html"


def test_report_is_self_contained_with_figures(report: Path) -> None:
    html = report.read_text()
    # no external scripts, styles or images: the file is viewed offline
    for pattern in ('<script src="http', '<link rel="stylesheet" href="http', '<img src="http'):
        assert pattern not in html
    # ASR-vs-turns, heat-map, safety beside over-refusal, earliest unsafe turn (a live run)
    assert html.count("Plotly.newPlot") == 4
    assert "Safety Index" in html and "Dialogues (failing first)" in html
    assert "Earliest unsafe turn (live mode, harmful dialogues)" in html
    assert "data:image/png;base64," in html, "dialogue images are inlined"


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)"
)
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    profile = [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, *profile, "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # plotly.js ran in the page: it draws its charts as <svg class="main-svg">
    assert dom.count('class="main-svg"') >= 4
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            *profile,
            "--virtual-time-budget=5000",
            "--window-size=1200,1800",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    image = Image.open(shot)
    assert image.size == (1200, 1800)
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 10, "the page is not blank"
