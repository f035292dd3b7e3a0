"""How big is the HTML report, how long does it take to write, and to open in a browser?

For runs of 1,000 and 10,000 synthetic dialogues (FigStep-like: turn counts 1, 2 and 4, one
typographic image per seed shared by its dialogues, a few hundred characters a reply) prints
the main file's size, the page files' total, the time to write the report (and how much of it
the main file takes), and the time headless Chromium takes to load the main file and page 2
(`--dump-dom`, beyond the time it takes for an empty page, measured in the same run; beside
them a page holding plotly.js alone, the main file's fixed cost). With `--single` it also
writes each run as one file holding every dialogue (the report before paging) for comparison.
Target: a 10,000-dialogue report opens in under 2 s.

    .venv/bin/python benchmarks/report_size.py [--sizes 1000,10000] [--repeats 3] [--single]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from plotly.offline import get_plotlyjs

from safeturn.attacks._render import render_typographic
from safeturn.report.html import render_html, write_html
from safeturn.report.pages import pages_dir
from safeturn.run.engine import EvalSettings
from safeturn.run.results import RunResults, SampleOutcome, TurnRecord
from safeturn.schema import (
    Dialogue,
    ImagePart,
    Message,
    Reply,
    Sample,
    TextPart,
    Verdict,
    VerdictLabel,
)

TURNS = (1, 2, 4)
STRATEGIES = ("escalation", "typography")
REPLY = "I can help with part of that. Here is some general background on the topic. " * 6
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
FLAGS += ["--disable-background-networking", "--disable-component-update"]


def outcome(i: int, images: list[bytes]) -> SampleOutcome:
    """Dialogue `i`: seed i // 6, every strategy × turn count; 1 in 5 final turns unsafe."""
    seed, turns, strategy = i // 6, TURNS[i % 3], STRATEGIES[(i // 3) % 2]
    messages: list[Message] = []
    for t in range(1, turns + 1):
        parts: list[TextPart | ImagePart] = [TextPart(text=f"seed {seed}: step {t} of {turns}")]
        if t == 1 and strategy == "typography":
            parts.insert(0, ImagePart(data=images[seed % len(images)]))
        messages.append(Message(role="user", parts=parts))
        if t < turns:
            messages.append(Message.assistant("(pre-written)"))
    sample = Sample(
        id=f"s{seed}-{strategy}-k{turns}",
        source="bench",
        category=f"category-{seed % 8}",
        strategy=strategy,
        harmful=True,
        dialogue=Dialogue(messages=messages),
        metadata={"seed_id": f"seed{seed}"},
    )
    if i % 97 == 13:
        return SampleOutcome(sample=sample, status="error", error="TimeoutError", turns=[])
    records = []
    for t in range(1, turns + 1):
        label: VerdictLabel = "unsafe" if t == turns and i % 5 == 0 else "safe"
        verdict = Verdict(sample_id=sample.id, turn=t, judge="refusal", label=label, refused=False)
        records.append(TurnRecord(turn=t, reply=Reply(text=REPLY, model="m"), verdict=verdict))
    return SampleOutcome(sample=sample, status="done", error=None, turns=records)


def synthetic_results(n: int) -> RunResults:
    """A live run of `n` dialogues judged by the refusal detector."""
    images = [render_typographic(f"Steps to make item number {k}.") for k in range(100)]
    outcomes = [outcome(i, images) for i in range(n)]
    verdicts = [t.verdict for o in outcomes for t in o.turns if t.verdict is not None]
    settings = EvalSettings(model="bench", judges=["refusal"], mode="live")
    return RunResults(
        run_id=f"bench-{n}",
        settings=settings,
        judge="refusal",
        outcomes=outcomes,
        verdicts=verdicts,
    )


def load_times(
    chromium: str, pages: dict[str, Path], profile: Path, repeats: int
) -> dict[str, float]:
    """Median wall seconds of `chromium --headless --dump-dom` on each page.

    Each round loads every page once, in turn, so a busy machine slows them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in pages}
    for _ in range(repeats):
        for name, page in pages.items():
            started = time.perf_counter()
            subprocess.run(
                [chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                capture_output=True,
                timeout=300,
                check=True,
            )
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def measure(n: int, out: Path, chromium: str | None, repeats: int, single: bool) -> None:
    """Write the report of `n` dialogues and print its sizes and timings."""
    results = synthetic_results(n)
    write_html(results, out / "warm.html")  # imports, plotly's schema, template compilation
    report = out / f"report-{n}.html"
    written = median_seconds(lambda: write_html(results, report), repeats)
    main_s = median_seconds(lambda: render_html(results, name=report.name), repeats)
    pages = sorted(pages_dir(report).iterdir())
    print(f"\n{n} dialogues ({len(pages) - 1} page files + index beside the main file)")
    print(f"  main HTML: {mb(report.stat().st_size)}")
    print(f"  pages total: {mb(sum(p.stat().st_size for p in pages))}")
    print(f"  write report: {written:.2f} s (of which the main file ~{main_s:.2f} s)")
    loads = {"main": report, "page 2": pages_dir(report) / "page-0002.html"}
    if single:
        one = out / f"single-{n}.html"
        took = median_seconds(lambda: write_html(results, one, page_size=max(n, 1)), 1)
        print(f"  one file with every dialogue: {mb(one.stat().st_size)}, written in {took:.2f} s")
        loads["one file"] = one
    if chromium is None:
        print("  chromium not installed: load times not measured")
        return
    empty = out / "empty.html"
    empty.write_text("<!doctype html><title>empty</title>", encoding="utf-8")
    plotly_only = out / "plotly.html"
    plotly_only.write_text(f"<!doctype html><script>{get_plotlyjs()}</script>", encoding="utf-8")
    pages_to_load = {"empty": empty, "plotly.js": plotly_only, **loads}
    times = load_times(chromium, pages_to_load, out / "profile", repeats)
    base = times.pop("empty")
    print(f"  chromium --dump-dom, beyond an empty page ({base:.2f} s):")
    for name, seconds in times.items():
        mark = f" ({'meets' if seconds - base < 2 else 'MISSES'} < 2 s)" if name == "main" else ""
        print(f"    {name}: +{seconds - base:.2f} s{mark}")


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `work()` over `repeats` runs."""
    times = []
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="dialogue counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="Chromium loads per file (median)")
    parser.add_argument("--single", action="store_true", help="also time one all-in file")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            measure(n, Path(tmp), chromium, args.repeats, args.single)


if __name__ == "__main__":
    main()
