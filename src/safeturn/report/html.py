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
from safeturn.report.charts import figures_html
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
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["thumbnail"] = _thumbnail
    template = env.get_template("run.html.j2")
    return template.render(
        r=results,
        asr=results.attack_success(),
        judge_card=card,
        judge_line=card_summary(results.judge, card),
        asr_by_category=results.attack_success_by("category"),
        asr_by_turns=results.attack_success_by("turns"),
        asr_by_strategy=results.attack_success_by("strategy"),
        si_exp=results.safety_index("exp"),
        si_uniform=results.safety_index("uniform"),
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
