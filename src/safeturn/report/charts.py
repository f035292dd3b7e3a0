"""Plotly figures of a run, embedded in the HTML report (plotly.js inline once: no network)."""

from __future__ import annotations

import math
from collections import defaultdict

import plotly.graph_objects as go

from safeturn.metrics import Judged, Rate, attack_success_rate
from safeturn.metrics.asr import REPORT_INTERVAL
from safeturn.run.results import RunResults


def asr_by_turns_figure(results: RunResults) -> go.Figure | None:
    """ASR against turn count, one line per strategy, with 95 % bootstrap interval bars."""
    cells: dict[str, dict[int, list[Judged]]] = defaultdict(lambda: defaultdict(list))
    for record in results.judged():
        if record.label != "invalid":
            cells[record.strategy or "none"][record.turns].append(record)
    if not cells or all(len(by_turn) < 2 for by_turn in cells.values()):
        return None
    figure = go.Figure()
    for strategy, by_turn in sorted(cells.items()):
        turns = sorted(by_turn)
        rates = [attack_success_rate(by_turn[k], REPORT_INTERVAL) for k in turns]
        figure.add_trace(
            go.Scatter(
                x=turns,
                y=[r.value for r in rates],
                mode="lines+markers",
                name=strategy,
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [r.high - r.value for r in rates],
                    "arrayminus": [r.value - r.low for r in rates],
                },
            )
        )
    all_turns = sorted({k for by_turn in cells.values() for k in by_turn})
    figure.update_layout(
        title="Attack success rate by number of turns",
        xaxis={"title": "user turns", "tickmode": "array", "tickvals": all_turns},
        yaxis_title="ASR",
        yaxis_range=[0, 1.05],
        height=420,
    )
    return figure


def category_heatmap(results: RunResults) -> go.Figure | None:
    """ASR per category (rows) and strategy (columns)."""
    cells: dict[tuple[str, str], list[Judged]] = defaultdict(list)
    for record in results.judged():
        if record.label != "invalid":
            key = (record.category or "uncategorised", record.strategy or "none")
            cells[key].append(record)
    if not cells:
        return None
    categories = sorted({c for c, _ in cells})
    strategies = sorted({s for _, s in cells})
    grid: list[list[float | None]] = []
    text: list[list[str]] = []
    for category in categories:
        row_values: list[float | None] = []
        row_text: list[str] = []
        for strategy in strategies:
            judged = cells.get((category, strategy))
            value: Rate | None = attack_success_rate(judged) if judged else None  # value only
            row_values.append(None if value is None else value.value)
            row_text.append("" if value is None else f"{value.value:.0%} (n={value.total})")
        grid.append(row_values)
        text.append(row_text)
    figure = go.Figure(
        go.Heatmap(
            z=grid,
            x=strategies,
            y=categories,
            text=text,
            texttemplate="%{text}",
            colorscale="Reds",
            zmin=0,
            zmax=1,
            colorbar={"title": "ASR"},
        )
    )
    figure.update_layout(
        title="Attack success by category and strategy",
        height=max(300, 40 * len(categories) + 120),
    )
    return figure


def safety_vs_over_refusal(results: RunResults) -> go.Figure | None:
    """Attack success on harmful items beside refusal of their benign twins."""
    bars = [
        ("ASR (harmful)", results.attack_success()),
        ("refusal (harmful)", results.harmful_refusal()),
        ("over-refusal (benign)", results.over_refusal()),
    ]
    if results.draws > 1:
        n = results.draws
        bars.insert(1, (f"ASR@{n} (harmful items)", results.attack_success_at_n()))
        bars.append((f"over-refusal@{n} (benign items)", results.over_refusal_at_n()))
    shown = [(name, r) for name, r in bars if r.total and not math.isnan(r.value)]
    if not shown:
        return None
    figure = go.Figure(
        go.Bar(
            x=[name for name, _ in shown],
            y=[r.value for _, r in shown],
            text=[f"{r.value:.0%} ({r.hits}/{r.total})" for _, r in shown],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [r.high - r.value for _, r in shown],
                "arrayminus": [r.value - r.low for _, r in shown],
            },
        )
    )
    figure.update_layout(
        title="Safety beside over-refusal", yaxis_range=[0, 1.05], yaxis_title="rate", height=380
    )
    return figure


def earliest_unsafe_figure(results: RunResults) -> go.Figure | None:
    """Live mode: the turn at which harmful dialogues first turned unsafe, per dialogue length."""
    by_turns = results.earliest_unsafe_by_turns()
    if not by_turns:
        return None
    labels = [*(f"turn {t}" for t in range(1, max(by_turns) + 1)), "never unsafe"]
    figure = go.Figure()
    for turns, distribution in by_turns.items():
        counts = [distribution.get(t, 0) for t in range(1, max(by_turns) + 1)]
        counts.append(distribution.get(None, 0))
        figure.add_trace(go.Bar(x=labels, y=counts, name=f"{turns}-turn dialogues"))
    figure.update_layout(
        title="Earliest unsafe turn (live mode, harmful dialogues)",
        barmode="group",
        xaxis_title="first turn judged unsafe",
        yaxis_title="dialogues",
        height=380,
    )
    return figure


def figures_html(results: RunResults) -> dict[str, str]:
    """HTML snippets of every figure that has data, by name, in page order.

    plotly.js is inlined in the first snippet, so the template must place them in this order.
    """
    builders = {
        "asr_by_turns": asr_by_turns_figure,
        "category_heatmap": category_heatmap,
        "safety_vs_over_refusal": safety_vs_over_refusal,
        "earliest_unsafe": earliest_unsafe_figure,
    }
    snippets: dict[str, str] = {}
    for name, build in builders.items():
        figure = build(results)
        if figure is None:
            continue
        snippets[name] = figure.to_html(
            full_html=False, include_plotlyjs=not snippets, config={"responsive": True}
        )
    return snippets
