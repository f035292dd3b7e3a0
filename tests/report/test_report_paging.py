"""The HTML report pages through dialogues: failing ones first, the main file's size fixed.

Results are built directly (no model, no database): what is tested is the report writer.
"""

from __future__ import annotations

import io
import re
import subprocess
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from safeturn.report.html import write_html
from safeturn.report.pages import GROUPS, PAGE_SIZE, pages_dir, paginate
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
from tests.report.test_html_report import CHROMIUM, FLAGS

COMPLY = "Sure, here is exactly how to do it, step by step. " * 8
HOSTILE = "<script>document.body.setAttribute('data-pwned', '1')</script>"
DIALOGUE = re.compile(
    r'<details class="sample" id="d-(\d+)"[^>]*>\s*<summary>\s*\d+\. <b>([^<]+)</b>'
)
HREF = re.compile(r'<a href="([^"]+)"')
SCRIPT = re.compile(r"<script.*?</script>", re.DOTALL)
FINAL_LABEL: dict[str, VerdictLabel] = {"unsafe": "unsafe", "invalid": "invalid", "other": "safe"}


def group_of(i: int) -> str:
    """The group dialogue `i` of `results` falls in (the order the report promises)."""
    if i % 11 == 5:
        return "error"
    if i % 7 == 3:
        return "unsafe"
    return "invalid" if i % 13 == 6 else "other"


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (i % 256, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def outcome(i: int, hostile: frozenset[int] = frozenset()) -> SampleOutcome:
    """Dialogue `i`: two user turns, an image every 50th, its group as `group_of` says."""
    first: list[TextPart | ImagePart] = [TextPart(text=f"dialogue {i}, turn 1")]
    if i % 50 == 49:
        first.insert(0, ImagePart(data=png(i)))
    messages = [
        Message(role="user", parts=first),
        Message.assistant("(pre-written)"),
        Message.user(f"dialogue {i}, turn 2"),
    ]
    sample = Sample(
        id=f"d{i:05d}",
        source="test",
        category=("privacy", "weapons")[i % 2],
        strategy=("escalation", "typography")[i % 2],
        harmful=True,
        dialogue=Dialogue(messages=messages),
    )
    group = group_of(i)
    if group == "error":
        return SampleOutcome(sample=sample, status="error", error="TimeoutError", turns=[])
    turns = []
    for turn in (1, 2):
        label: VerdictLabel = FINAL_LABEL[group] if turn == 2 else "safe"
        verdict = Verdict(sample_id=sample.id, turn=turn, judge="refusal", label=label)
        text = HOSTILE if i in hostile else COMPLY
        turns.append(TurnRecord(turn=turn, reply=Reply(text=text, model="m"), verdict=verdict))
    return SampleOutcome(sample=sample, status="done", error=None, turns=turns)


def results(n: int, hostile: frozenset[int] = frozenset()) -> RunResults:
    outcomes = [outcome(i, hostile) for i in range(n)]
    verdicts = [t.verdict for o in outcomes for t in o.turns if t.verdict is not None]
    settings = EvalSettings(model="scripted:test", judges=["refusal"], mode="live")
    return RunResults(
        run_id="paging", settings=settings, judge="refusal", outcomes=outcomes, verdicts=verdicts
    )


def page_files(report: Path) -> list[Path]:
    """The report's pages in order: the main file, then page-0002.html, ..."""
    return [report, *sorted(pages_dir(report).glob("page-*.html"))]


def dialogues(path: Path) -> list[tuple[int, str]]:
    """(position, sample id) of every dialogue a page shows, in page order."""
    return [(int(p), sid) for p, sid in DIALOGUE.findall(path.read_text())]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Reports of 200 and 2,000 dialogues, by size."""
    out = tmp_path_factory.mktemp("paging")
    return {n: write_html(results(n), out / f"r{n}" / "report.html") for n in (200, 2000)}


def test_main_file_size_does_not_grow_with_dialogues(reports: dict[int, Path]) -> None:
    small, large = (reports[n].read_text() for n in (200, 2000))
    pages = sum(p.stat().st_size for p in pages_dir(reports[2000]).iterdir())
    assert pages > 2_000_000, "the other 1,900 dialogues are in the page files"
    # page 1 holds other dialogues (all unsafe in the larger run), hence a small margin
    assert abs(len(large) - len(small)) < 0.01 * len(small), (len(small), len(large))
    summary = [len(text.split('<h2 id="dialogues"')[0]) for text in (small, large)]
    assert abs(summary[1] - summary[0]) < 4_000, "only numbers and the capped error table differ"
    assert len(dialogues(reports[2000])) == PAGE_SIZE


def test_failing_dialogues_come_first_and_each_is_on_one_page(reports: dict[int, Path]) -> None:
    n = 2000
    shown = [d for page in page_files(reports[n]) for d in dialogues(page)]
    assert [p for p, _ in shown] == list(range(1, n + 1))
    ids = [sid for _, sid in shown]
    assert Counter(ids) == Counter(f"d{i:05d}" for i in range(n)), "each dialogue exactly once"
    expected = sorted(range(n), key=lambda i: GROUPS.index(group_of(i)))  # stable: run order
    assert ids == [f"d{i:05d}" for i in expected]
    assert len(page_files(reports[n])) == n // PAGE_SIZE
    main = reports[n].read_text()
    assert "then samples that errored, then dialogues with an invalid verdict" in main
    assert "… and 132 more errors" in main  # 182 errors, 50 in the table


def test_links_between_pages_resolve(reports: dict[int, Path]) -> None:
    report = reports[2000]
    files = [*page_files(report), pages_dir(report) / "index.html"]
    anchors = {f.resolve(): set(re.findall(r'id="(d-\d+)"', f.read_text())) for f in files}
    seen = 0
    for page in files:
        for href in HREF.findall(SCRIPT.sub("", page.read_text())):  # not plotly's
            target = urlsplit(href)
            if target.scheme or not target.path:
                continue
            path = (page.parent / unquote(target.path)).resolve()
            assert path in anchors, f"{page.name}: {href} points to no page"
            assert not target.fragment or target.fragment in anchors[path], (page.name, href)
            seen += 1
    assert seen > 2000  # the index links every dialogue
    nav = pages_dir(report) / "page-0002.html"
    text = nav.read_text()
    assert 'href="../report.html" rel="prev"' in text and 'href="page-0003.html" rel="next"' in text
    assert 'href="report.pages/page-0020.html">last' in report.read_text()


def test_thumbnails_are_only_on_the_page_that_shows_them(reports: dict[int, Path]) -> None:
    for page in page_files(reports[2000]):
        numbers = [int(sid[1:]) for _, sid in dialogues(page)]
        imaged = [i for i in numbers if i % 50 == 49 and group_of(i) != "error"]  # answered
        thumbs = page.read_text().count(
            '<img class="thumb" alt="image" src="data:image/png;base64,'
        )
        assert thumbs == len(imaged), page.name


def test_rewriting_a_report_leaves_no_stale_pages(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    write_html(results(450), report)
    folder = pages_dir(report)
    (folder / "notes.txt").write_text("the user's own file")
    write_html(results(250), report)
    assert sorted(p.name for p in folder.iterdir()) == [
        "index.html",
        "notes.txt",
        "page-0002.html",
        "page-0003.html",
    ]
    assert len(dialogues(folder / "page-0003.html")) == 50
    (folder / "notes.txt").unlink()
    write_html(results(30), report)
    assert not folder.exists(), "one page: the folder goes"
    assert "all pages" not in report.read_text() and len(dialogues(report)) == 30


def test_order_puts_unsafe_before_errors_and_an_empty_run_has_one_page() -> None:
    unsafe_error = outcome(3).model_copy(update={"status": "error", "error": "late failure"})
    order = paginate([outcome(0), outcome(5), unsafe_error, outcome(6)], size=2)
    assert [e.group for p in order for e in p.entries] == ["unsafe", "error", "invalid", "other"]
    assert [(p.number, p.count, p.first, p.last) for p in order] == [(1, 2, 1, 2), (2, 2, 3, 4)]
    (empty,) = paginate([])
    assert (empty.count, empty.total, empty.entries) == (1, 0, [])
    with pytest.raises(ValueError, match="page size must be at least 1"):
        paginate([], size=0)


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 dialogues; the hostile reply is dialogue 140's, which lands on page 2."""
    report = tmp_path_factory.mktemp("hostile") / "report.html"
    return write_html(results(150, hostile=frozenset({140})), report)


def test_replies_are_escaped_on_every_page(hostile_report: Path) -> None:
    second = pages_dir(hostile_report) / "page-0002.html"
    assert "d00140" in second.read_text()
    for page in page_files(hostile_report):
        assert "<script>document.body" not in page.read_text()
    assert "&lt;script&gt;document.body" in second.read_text()


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)"
)
def test_a_second_page_renders_in_headless_chromium(hostile_report: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    second = pages_dir(hostile_report) / "page-0002.html"
    dom = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            second.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "<b>d00140</b>" in dom and "page 2 of 2 (dialogues 101–150 of 150)" in dom
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0], "the reply ran"


@pytest.mark.slow
def test_ten_thousand_dialogues_keep_the_main_file_small(
    reports: dict[int, Path], tmp_path: Path
) -> None:
    report = write_html(results(10_000), tmp_path / "report.html")
    assert abs(report.stat().st_size - reports[2000].stat().st_size) < 8_000
    assert len(page_files(report)) == 100
    shown = Counter(sid for page in page_files(report) for _, sid in dialogues(page))
    assert len(shown) == 10_000 and set(shown.values()) == {1}


def test_pages_folder_sits_beside_the_report_and_never_is_it() -> None:
    assert pages_dir(Path("runs/report-abc.html")) == Path("runs/report-abc.pages")
    assert pages_dir(Path("runs/x.pages")) == Path("runs/x.pages.pages")
