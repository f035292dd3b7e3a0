"""A single self-contained HTML report of a run (inline CSS and thumbnails, no network)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from safeturn.errors import ImageError
from safeturn.judges.card import JudgeCard, card_for, card_summary
from safeturn.metrics import SafetyIndex, partial_note
from safeturn.metrics.asr import BOOTSTRAP_CAVEAT, REPORT_INTERVAL_TEXT
from safeturn.metrics.safety_index import SAFEMT_K_TEXT
from safeturn.report.charts import figures_html
from safeturn.report.terminal import WILSON_TEXT, safety_indices
from safeturn.run.results import RunResults
from safeturn.schema import ImagePart

_THUMB_PX = 180


def _thumbnail(image: ImagePart) -> str:
    """A small PNG data URL of an image, or an empty string if it cannot be read."""
    try:
        picture = image.load()
    except ImageError:
        return ""
    picture.thumbnail((_THUMB_PX, _THUMB_PX))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _si_rows(results: RunResults) -> list[tuple[str, SafetyIndex, str]]:
    """(K, index, partial note) rows: the run's own K; SafeMT's fixed K too when that is partial."""
    indices = safety_indices(results)
    rows = [
        ("run's turn counts", si, partial_note(si))
        for si in indices["present"].values()
        if si is not None
    ]
    if rows and rows[0][1].partial:
        rows += [
            (f"SafeMT's fixed K {SAFEMT_K_TEXT}", si, partial_note(si))
            for si in indices["safemt"].values()
            if si is not None
        ]
    return rows


def render_html(results: RunResults, cards: Sequence[JudgeCard] = ()) -> str:
    """Render the report as one HTML string.

    Args:
        results: The run.
        cards: Validation cards the user gave; the headline judge's (else its shipped card)
            is summarised beside the ASR.
    """
    card = card_for(results.judge, cards)
    env = Environment(
        loader=PackageLoader("safeturn.report", "templates"),
        autoescape=select_autoescape(["html", "html.j2"]),  # replies are untrusted text
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["thumbnail"] = _thumbnail
    template = env.get_template("run.html.j2")
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
        asr_at_n=results.attack_success_at_n(),
        over_refusal_at_n=results.over_refusal_at_n(),
        siuo=results.siuo(),
        earliest=results.earliest_unsafe(),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def write_html(results: RunResults, path: Path, cards: Sequence[JudgeCard] = ()) -> Path:
    """Write the report to `path` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(results, cards), encoding="utf-8")
    return path
