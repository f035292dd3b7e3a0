"""Terminal summary tables and the machine-readable summary of a run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from safeturn.judges.card import JudgeCard, card_for, card_summary
from safeturn.metrics import Rate, SafetyIndex, partial_note
from safeturn.metrics.asr import BOOTSTRAP_CAVEAT, REPORT_INTERVAL, REPORT_INTERVAL_TEXT
from safeturn.metrics.safety_index import SAFEMT_K_TEXT, WeightScheme
from safeturn.report.versions import SUMMARY_SCHEMA_VERSION
from safeturn.run.results import EarliestUnsafe, RunResults, SiuoSummary

WILSON_TEXT = (
    "95% Wilson score (per-draw rates over the effective sample size when items have draws)"
)
"""How reports name the interval of the rates that are not ASR (refusal, over-refusal, SIUO)."""


def _rate_json(value: Rate) -> dict[str, Any]:
    return {
        "hits": value.hits,
        "total": value.total,
        "value": None if math.isnan(value.value) else value.value,
        "ci95": [value.low, value.high],
    }


def safety_index_json(si: SafetyIndex | None) -> dict[str, Any] | None:
    """A Safety Index as JSON-ready data, with whether it is partial and why."""
    if si is None:
        return None
    data = si._asdict()
    data.update(partial=si.partial, note=partial_note(si) or None)
    return data


def safety_indices(results: RunResults) -> dict[str, dict[str, SafetyIndex | None]]:
    """The run's Safety Index over its own turn counts and over SafeMT's fixed K, both variants."""
    variants: tuple[WeightScheme, ...] = ("exp", "uniform")
    return {
        "present": {v: results.safety_index(v) for v in variants},
        "safemt": {v: results.safety_index(v, "safemt") for v in variants},
    }


def safety_index_lines(results: RunResults) -> list[tuple[str, bool]]:
    """The Safety Index as text lines (line, is a warning), partial ones labelled as such.

    Over the run's own turn counts first; when that is partial, SafeMT's fixed K beside it.
    """
    indices = safety_indices(results)
    exp, uniform = indices["present"]["exp"], indices["present"]["uniform"]
    if exp is None or uniform is None:
        return []
    label = "PARTIAL Safety Index" if exp.partial else "Safety Index"
    lines = [
        (
            f"{label} {exp.value:.3f} (exp(-k) weights over turns {sorted(exp.weights)}; "
            f"part1 {exp.part1:.3f}, part2 {exp.part2:.3f}); turn-balanced {uniform.value:.3f}",
            False,
        )
    ]
    if not exp.partial:
        return lines
    lines.append((partial_note(exp) + "; not comparable with SafeMT's tables", True))
    fixed, fixed_uniform = indices["safemt"]["exp"], indices["safemt"]["uniform"]
    if fixed is not None and fixed_uniform is not None:
        tag = "PARTIAL " if fixed.partial else ""
        lines.append(
            (
                f"{tag}Safety Index with SafeMT's fixed K {SAFEMT_K_TEXT}: {fixed.value:.3f} "
                f"(part1 {fixed.part1:.3f}, part2 {fixed.part2:.3f}); "
                f"turn-balanced {fixed_uniform.value:.3f}",
                False,
            )
        )
        if fixed.partial:
            lines.append((partial_note(fixed), True))
    return lines


def turn_label(turn: int | None) -> str:
    """`1`, `2`, … for an earliest unsafe turn; `never` for dialogues that stayed safe."""
    return "never" if turn is None else str(turn)


def _earliest_json(distribution: EarliestUnsafe) -> dict[str, int]:
    return {turn_label(turn): count for turn, count in distribution.items()}


def siuo_json(summary: SiuoSummary | None) -> dict[str, Any] | None:
    """SIUO Safe / Effective / S&E as JSON-ready data (None when no `siuo:` judge ran)."""
    if summary is None:
        return None
    scores = summary.scores
    return {
        "judge": summary.judge,
        "items": summary.items,
        "invalid_verdicts": summary.invalid,
        "safe": _rate_json(scores.safe),
        "effective": _rate_json(scores.effective),
        "safe_and_effective": _rate_json(scores.safe_and_effective),
    }


def judge_validation_json(judge: str, card: JudgeCard | None) -> dict[str, Any]:
    """The judge's validity line and its card (None without one) as JSON-ready data."""
    return {
        "summary": card_summary(judge, card),
        "card": None if card is None else card.model_dump(mode="json"),
        "card_origin": None if card is None else card.origin or None,
    }


def summary_dict(results: RunResults, cards: Sequence[JudgeCard] = ()) -> dict[str, Any]:
    """The headline numbers as plain JSON-ready data (with the headline judge's validity).

    `schema_version` (`report/versions.py`) names the layout, so a reader can tell it.

    `safety_index` is over the run's own turn counts, `safety_index_safemt_k` over SafeMT's
    fixed K; each says whether it is `partial` and why (`note`).
    """
    indices = safety_indices(results)
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "run_id": results.run_id,
        "model": results.settings.model,
        "judge": results.judge,
        "judge_validation": judge_validation_json(results.judge, card_for(results.judge, cards)),
        "mode": results.settings.mode,
        "intervals": {
            "attack_success": f"{REPORT_INTERVAL}: {REPORT_INTERVAL_TEXT}",
            "other_rates": f"wilson: {WILSON_TEXT}",
        },
        "samples": len(results.outcomes),
        "items": results.items(),
        "draws_per_item": results.draws,
        "errors": len(results.errors()),
        "bridged_replies": results.bridged_replies(),
        "attack_success_rate": _rate_json(results.attack_success()),
        "attack_success_rate_at_n": _rate_json(results.attack_success_at_n()),
        "harmful_refusal_rate": _rate_json(results.harmful_refusal()),
        "over_refusal_rate": _rate_json(results.over_refusal()),
        "over_refusal_rate_at_n": _rate_json(results.over_refusal_at_n()),
        "attack_success_by_category": {
            k: _rate_json(v) for k, v in results.attack_success_by("category").items()
        },
        "attack_success_by_turns": {
            k: _rate_json(v) for k, v in results.attack_success_by("turns").items()
        },
        "attack_success_by_strategy": {
            k: _rate_json(v) for k, v in results.attack_success_by("strategy").items()
        },
        "attack_success_at_n_by_turns": {
            k: _rate_json(v) for k, v in results.attack_success_by("turns", at_n=True).items()
        },
        "safety_index": {v: safety_index_json(si) for v, si in indices["present"].items()},
        "safety_index_safemt_k": {v: safety_index_json(si) for v, si in indices["safemt"].items()},
        "siuo": siuo_json(results.siuo()),
        "earliest_unsafe_turn": (
            None
            if results.settings.mode != "live"
            else {
                "all": _earliest_json(results.earliest_unsafe()),
                "by_turns": {
                    str(k): _earliest_json(v) for k, v in results.earliest_unsafe_by_turns().items()
                },
            }
        ),
    }


def write_summary_json(results: RunResults, path: Path, cards: Sequence[JudgeCard] = ()) -> Path:
    """Write `summary_dict` to `path`."""
    path.write_text(json.dumps(summary_dict(results, cards), indent=2), encoding="utf-8")
    return path


def print_summary(results: RunResults, console: Console, cards: Sequence[JudgeCard] = ()) -> None:
    """Print the headline table, the judge's validity line and the per-group tables."""
    head = Table(title=f"run {results.run_id} — {results.settings.model} — judge {results.judge}")
    head.add_column("metric")
    head.add_column("value (95% CI, n)", justify="right")
    n = results.draws
    per = f", per draw of {n}" if n > 1 else ""
    head.add_row(f"attack success rate (harmful, final turn{per})", str(results.attack_success()))
    if n > 1:
        head.add_row(f"ASR@{n} (items unsafe in any draw)", str(results.attack_success_at_n()))
    head.add_row(f"refusal rate (harmful{per})", str(results.harmful_refusal()))
    head.add_row(f"over-refusal (benign twins{per})", str(results.over_refusal()))
    if n > 1:
        head.add_row(f"over-refusal@{n} (refused in any draw)", str(results.over_refusal_at_n()))
    head.add_row("samples with errors", f"{len(results.errors())} of {len(results.outcomes)}")
    head.add_row("replies that saw images via OCR bridge", str(results.bridged_replies()))
    console.print(head)
    console.print(
        f"intervals: ASR {REPORT_INTERVAL_TEXT}; {BOOTSTRAP_CAVEAT}. Other rates {WILSON_TEXT}.",
        markup=False,
    )
    card = card_for(results.judge, cards)
    style = None if card is not None else "yellow"
    console.print(f"ASR decided by {card_summary(results.judge, card)}", style=style, markup=False)
    _print_siuo(results.siuo(), console)
    _print_earliest(results, console)
    for key in ("turns", "strategy", "category"):
        groups = results.attack_success_by(key)
        at_n = results.attack_success_by(key, at_n=True) if n > 1 else {}
        if len(groups) > 1 or (key == "category" and groups):
            table = Table(title=f"attack success by {key}")
            table.add_column(key)
            per = " per draw" if at_n else ""
            table.add_column(f"ASR{per} (95% bootstrap CI, n)", justify="right")
            if at_n:
                table.add_column(f"ASR@{n} per item", justify="right")
            for name, value in groups.items():
                table.add_row(name, str(value), *([str(at_n[name])] if at_n else []))
            console.print(table)
    for line, warning in safety_index_lines(results):
        console.print(line, style="yellow" if warning else None, markup=False)


def _print_siuo(summary: SiuoSummary | None, console: Console) -> None:
    if summary is None:
        return
    table = Table(title=f"SIUO (judge {summary.judge}; {summary.items} items)")
    table.add_column("metric")
    table.add_column("value (95% CI, n)", justify="right")
    table.add_row("safe", str(summary.scores.safe))
    table.add_row("effective", str(summary.scores.effective))
    table.add_row("safe & effective", str(summary.scores.safe_and_effective))
    if summary.invalid:
        table.add_row("invalid verdicts (left out)", str(summary.invalid))
    console.print(table)


def _print_earliest(results: RunResults, console: Console) -> None:
    """Live mode: where harmful dialogues first turned unsafe, by dialogue length."""
    by_turns = results.earliest_unsafe_by_turns()
    if not by_turns:
        return
    longest = max(by_turns)
    table = Table(title="earliest unsafe turn (live mode, harmful dialogues)")
    table.add_column("dialogue turns")
    for turn in range(1, longest + 1):
        table.add_column(f"turn {turn}", justify="right")
    table.add_column("never", justify="right")
    for turns, distribution in by_turns.items():
        cells = [str(distribution.get(t, 0)) if t <= turns else "—" for t in range(1, longest + 1)]
        table.add_row(str(turns), *cells, str(distribution.get(None, 0)))
    console.print(table)
