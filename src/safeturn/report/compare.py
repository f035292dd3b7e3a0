"""Comparing two runs: A's pairwise win rate over B, and a metric-by-metric before/after.

The one import place for both; they live in `pairwise.py` (win rate by a pairwise judge),
`before_after.py` with `loop_metrics.py` (the paired comparison `safeturn loop` makes) and
`before_after_output.py` (its JSON, terminal table and HTML page).
"""

from __future__ import annotations

from safeturn.report.before_after import MIN_GROUPS, BeforeAfter, DeltaRow, Estimate, before_after
from safeturn.report.before_after_output import (
    before_after_json,
    print_before_after,
    render_before_after_html,
)
from safeturn.report.loop_metrics import GROUP_METADATA_KEYS, default_group
from safeturn.report.pairwise import (
    PairMatch,
    PairwiseReport,
    match_runs,
    pairwise_json,
    pairwise_report,
    print_pairwise,
    shared_dialogue,
    write_pairwise_json,
)

__all__ = [
    "GROUP_METADATA_KEYS",
    "MIN_GROUPS",
    "BeforeAfter",
    "DeltaRow",
    "Estimate",
    "PairMatch",
    "PairwiseReport",
    "before_after",
    "before_after_json",
    "default_group",
    "match_runs",
    "pairwise_json",
    "pairwise_report",
    "print_before_after",
    "print_pairwise",
    "render_before_after_html",
    "shared_dialogue",
    "write_pairwise_json",
]
