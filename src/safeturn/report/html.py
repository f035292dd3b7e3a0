"""The HTML report of a run: summary, charts and tables, and its dialogues a page at a time.

The main file is self-contained (inline CSS, plotly.js and thumbnails; no network) and holds the
first page of dialogues, failing ones first; the rest are static pages in `<report>.pages/`
beside it (`report.pages`), so the main file's size does not grow with the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from safeturn.judges.card import JudgeCard, card_for, card_summary
from safeturn.metrics import SafetyIndex, partial_note
from safeturn.metrics.asr import BOOTSTRAP_CAVEAT, REPORT_INTERVAL_TEXT
from safeturn.metrics.safety_index import SAFEMT_K_TEXT, WeightScheme
from safeturn.report.charts import figures_html
from safeturn.report.pages import (
    ORDER_TEXT,
    PAGE_SIZE,
    Links,
    Page,
    Thumbnails,
    pages_dir,
    paginate,
    write_pages,
)
from safeturn.report.terminal import WILSON_TEXT
from safeturn.run.results import RunResults

ERRORS_SHOWN = 50
"""Rows of the main report's error table; every error is also among the dialogue pages."""


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("safeturn.report", "templates"),
        autoescape=select_autoescape(["html", "html.j2"]),  # replies are untrusted text
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _si_rows(results: RunResults) -> list[tuple[str, SafetyIndex, str]]:
    """(K, index, partial note) rows: the run's own K; SafeMT's fixed K too when that is partial.

    SafeMT's K is only computed when shown: each index bootstraps nothing but still scans
    every dialogue, which a 10,000-dialogue report notices.
    """
    variants: tuple[WeightScheme, ...] = ("exp", "uniform")
    present = [results.safety_index(v) for v in variants]
    rows = [("run's turn counts", si, partial_note(si)) for si in present if si is not None]
    if rows and rows[0][1].partial:
        safemt = [results.safety_index(v, "safemt") for v in variants]
        k_name = f"SafeMT's fixed K {SAFEMT_K_TEXT}"
        rows += [(k_name, si, partial_note(si)) for si in safemt if si is not None]
    return rows


def render_html(
    results: RunResults,
    cards: Sequence[JudgeCard] = (),
    *,
    name: str = "report.html",
    page_size: int = PAGE_SIZE,
) -> str:
    """Render the main report as one HTML string: summary, charts, tables and page 1.

    Args:
        results: The run.
        cards: Validation cards the user gave; the headline judge's (else its shipped card)
            is summarised beside the ASR.
        name: The report's file name, which the links to the other pages start from.
        page_size: Dialogues a page.
    """
    first = paginate(results.outcomes, page_size)[0]
    return _render_main(results, cards, first, name, Thumbnails())


def _render_main(
    results: RunResults, cards: Sequence[JudgeCard], page: Page, name: str, thumb: Thumbnails
) -> str:
    """The main file: every summary figure and table, and `page` (the first) of dialogues."""
    card = card_for(results.judge, cards)
    template = _environment().get_template("run.html.j2")
    si_rows = _si_rows(results)
    return template.render(
        r=results,
        asr=results.attack_success(),
        judge_card=card,
        judge_line=card_summary(results.judge, card),
        asr_by_category=results.attack_success_by("category"),
        asr_by_turns=results.attack_success_by("turns"),
        asr_by_strategy=results.attack_success_by("strategy"),
        si_rows=si_rows,
        si_exp=si_rows[0][1] if si_rows else None,
        si_exp_note=partial_note(si_rows[0][1]) if si_rows else "",
        safemt_k=SAFEMT_K_TEXT,
        asr_interval=REPORT_INTERVAL_TEXT,
        bootstrap_caveat=BOOTSTRAP_CAVEAT,
        wilson_interval=WILSON_TEXT,
        agreement=results.judge_agreement(),
        figures=figures_html(results),
        harmful_refusal=results.harmful_refusal(),
        over_refusal=results.over_refusal(),
        asr_at_n=results.attack_success_at_n() if results.draws > 1 else None,  # shown then
        over_refusal_at_n=results.over_refusal_at_n() if results.draws > 1 else None,
        siuo=results.siuo(),
        earliest=results.earliest_unsafe(),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        errors=results.errors(),
        errors_shown=ERRORS_SHOWN,
        order_text=ORDER_TEXT,
        page=page,
        links=Links.from_main(name),
        pages_folder=pages_dir(Path(name)).name + "/",
        thumb=thumb,
    )


def write_html(
    results: RunResults, path: Path, cards: Sequence[JudgeCard] = (), page_size: int = PAGE_SIZE
) -> Path:
    """Write the report to `path`, its other pages to `<path stem>.pages/`; return `path`.

    Page files an earlier report left there are removed first, so none is stale.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pages = paginate(results.outcomes, page_size)
    thumb = Thumbnails()  # shared by every page: each image is shrunk once
    env = _environment()

    def render(page: Page | None, links: Links) -> str:
        context = {"run_id": results.run_id, "links": links, "order_text": ORDER_TEXT}
        if page is None:
            index = env.get_template("index.html.j2")
            return index.render(context, pages=pages, page_size=page_size)
        return env.get_template("page.html.j2").render(context, page=page, thumb=thumb)

    write_pages(path, pages, render)
    path.write_text(_render_main(results, cards, pages[0], path.name, thumb), encoding="utf-8")
    return path
