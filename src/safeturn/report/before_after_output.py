"""The before/after comparison as JSON, as a terminal table and as one HTML page."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from safeturn.report.before_after import MIN_GROUPS, BeforeAfter, DeltaRow, Estimate
from safeturn.report.pairwise import pairwise_json
from safeturn.report.versions import BEFORE_AFTER_SCHEMA_VERSION


def _num(value: float) -> float | None:
    return None if math.isnan(value) else value


def _delta_text(row: DeltaRow) -> str:
    if math.isnan(row.delta):
        return "n/a"
    mark = {True: " (better)", False: " (worse)", None: ""}[row.improved]
    return f"{row.delta:+.3f} [{row.delta_low:+.3f}, {row.delta_high:+.3f}]{mark}"


def before_after_json(report: BeforeAfter) -> dict[str, Any]:
    """The comparison as JSON-ready data (with the pairwise verdicts when a judge ran)."""

    def estimate(e: Estimate) -> dict[str, Any]:
        return {
            "value": _num(e.value),
            "ci95": [_num(e.low), _num(e.high)],
            "n": e.n,
            "hits": e.hits,
        }

    return {
        "schema_version": BEFORE_AFTER_SCHEMA_VERSION,
        "before": {"run_id": report.before.run_id, "model": report.before.settings.model},
        "after": {"run_id": report.after.run_id, "model": report.after.settings.model},
        "judge": report.before.judge,
        "seed_groups": report.groups,
        "bootstrap_resamples": report.n_resamples,
        "delta_is": "after - before; 95% CI from a paired cluster bootstrap over seed groups",
        "intervals_are": (
            "ASR, Safety Index and mean scores: cluster bootstrap over seed groups; "
            "over-refusal and helpful answers: Wilson"
        ),
        "helpfulness_is": (
            "share of benign twins whose final reply neither refused nor was judged unsafe"
        ),
        "metrics": {
            row.key: {
                "label": row.label,
                "before": estimate(row.before),
                "after": estimate(row.after),
                "delta": _num(row.delta),
                "delta_ci95": [_num(row.delta_low), _num(row.delta_high)],
                "significant": row.significant,
                "improved": row.improved,
                "higher_is_better": row.higher_is_better,
                "partial": bool(row.note),
                "note": row.note or None,
            }
            for row in report.rows
        },
        "pairwise": None if report.pairwise is None else pairwise_json(report.pairwise),
    }


def print_before_after(report: BeforeAfter, console: Console) -> None:
    """The before/after table: each metric with its interval, and the delta's paired interval."""
    table = Table(
        title=(
            f"before → after on {report.groups} held-out seed groups "
            f"(judge {report.before.judge}; 95% CI, n)"
        )
    )
    table.add_column("metric")
    table.add_column(f"before\n{report.before.settings.model}", justify="right")
    table.add_column(f"after\n{report.after.settings.model}", justify="right")
    table.add_column("Δ after − before [paired 95% CI]", justify="right")
    for row in report.rows:
        label = f"{row.label} (partial)" if row.note else row.label
        table.add_row(label, str(row.before), str(row.after), _delta_text(row))
    if report.pairwise is not None:
        pw = report.pairwise
        table.add_row(f"win rate of after vs before ({pw.judge})", "", "", str(pw.win_rate))
    console.print(table)
    console.print(
        "helpful answers: benign twins whose final reply neither refused nor was judged unsafe; "
        f"Δ intervals: paired cluster bootstrap over seed groups ({report.n_resamples} resamples); "
        "ASR, Safety Index and mean scores: cluster bootstrap, other rates: Wilson"
    )
    for row in report.rows:
        if row.note:
            text = f"{row.label}: {row.note}; not comparable with SafeMT's tables"
            console.print(text, style="yellow", markup=False)
    if report.groups < MIN_GROUPS:
        console.print(
            f"[yellow]only {report.groups} held-out seed groups: no change is called better or "
            f"worse below {MIN_GROUPS}; the intervals are too narrow to trust[/yellow]"
        )


_BEFORE_AFTER_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>safeturn loop: before / after</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.35rem .6rem}
td.n{text-align:right;font-variant-numeric:tabular-nums}.better{color:#17663a;font-weight:600}
.worse{color:#a11;font-weight:600}pre{background:#f6f6f6;padding:.6rem;overflow:auto}
</style></head><body>
<h1>Closed loop: before / after on held-out seeds</h1>
<p>Before: <code>{{ j.before.model }}</code> (run {{ j.before.run_id }}).
After: <code>{{ j.after.model }}</code> (run {{ j.after.run_id }}).
Headline judge: <code>{{ j.judge }}</code>. {{ j.seed_groups }} held-out seed groups.</p>
<table><tr><th>metric</th><th>before (95% CI, n)</th><th>after (95% CI, n)</th>
<th>Δ after − before [paired 95% CI]</th></tr>
{% for row in rows %}<tr><td>{{ row.label }}{% if row.note %} <b>(partial)</b>{% endif %}</td>
<td class="n">{{ row.before }}</td><td class="n">{{ row.after }}</td>
<td class="n {{ row.css }}">{{ row.delta }}</td></tr>
{% endfor %}
{% if pairwise %}<tr><td>win rate of after vs before ({{ pairwise.judge }})</td><td></td><td></td>
<td class="n">{{ pairwise.text }}</td></tr>{% endif %}
</table>
<p>ASR, the Safety Index and mean scores carry a cluster bootstrap over seed groups (95%,
percentile); over-refusal and helpful answers Wilson intervals. Each Δ interval is a paired
cluster bootstrap ({{ j.bootstrap_resamples }} resamples): one draw of seed groups applies to
both runs. <em>Helpful answers</em>: {{ j.helpfulness_is }}.
{% for row in rows if row.note %}<br><strong>{{ row.label }}</strong>: {{ row.note }}; not
comparable with SafeMT's tables.{% endfor %}
{% if j.seed_groups < min_groups %}<strong>Only {{ j.seed_groups }} held-out seed groups: no
change is called better or worse below {{ min_groups }}.</strong>{% endif %}</p>
{% for name, href in links %}<p><a href="{{ href }}">{{ name }}</a></p>{% endfor %}
{% if context %}<h2>Loop</h2><pre>{{ context }}</pre>{% endif %}
</body></html>
"""


def render_before_after_html(
    report: BeforeAfter, *, links: Sequence[tuple[str, str]] = (), context: Any = None
) -> str:
    """One self-contained HTML page with the before/after table, links and loop context."""
    from jinja2 import Environment, select_autoescape

    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    rows = [
        {
            "label": row.label,
            "before": str(row.before),
            "after": str(row.after),
            "delta": _delta_text(row),
            "css": {True: "better", False: "worse", None: ""}[row.improved],
            "note": row.note,
        }
        for row in report.rows
    ]
    pairwise = (
        None
        if report.pairwise is None
        else {"judge": report.pairwise.judge, "text": str(report.pairwise.win_rate)}
    )
    return env.from_string(_BEFORE_AFTER_HTML).render(
        j=before_after_json(report),
        rows=rows,
        pairwise=pairwise,
        links=list(links),
        min_groups=MIN_GROUPS,
        context=json.dumps(context, indent=2) if context is not None else "",
    )
