"""Pure functions from verdicts to rates, indices, intervals and agreement."""

from safeturn.metrics.agreement import Agreement, cohen_kappa
from safeturn.metrics.asr import (
    Judged,
    LabelCounts,
    asr_at_n,
    asr_by,
    asr_by_turns,
    attack_success_rate,
    count_labels,
    earliest_unsafe_distribution,
    earliest_unsafe_turn,
    unsafe_by_item,
)
from safeturn.metrics.bootstrap import Interval, bootstrap_ci, bootstrap_rate
from safeturn.metrics.draws import (
    any_draw_rate,
    cluster_bootstrap_rate,
    effective_size,
    intra_item_correlation,
    per_draw_rate,
)
from safeturn.metrics.rates import Rate, rate, wilson_bounds
from safeturn.metrics.safety_index import (
    DEFAULT_TURNS,
    TURN_SETS,
    SafetyIndex,
    TurnSet,
    indicators_from_records,
    partial_note,
    run_safety_index,
    safety_index,
    seed_instability,
    turn_weights,
)
from safeturn.metrics.siuo import (
    SiuoJudgement,
    SiuoScores,
    SiuoVote,
    majority_vote,
    siuo_scores,
)
from safeturn.metrics.winrate import WinRate, win_rate

__all__ = [
    "DEFAULT_TURNS",
    "TURN_SETS",
    "Agreement",
    "Interval",
    "Judged",
    "LabelCounts",
    "Rate",
    "SafetyIndex",
    "SiuoJudgement",
    "SiuoScores",
    "SiuoVote",
    "TurnSet",
    "WinRate",
    "any_draw_rate",
    "asr_at_n",
    "asr_by",
    "asr_by_turns",
    "attack_success_rate",
    "bootstrap_ci",
    "bootstrap_rate",
    "cluster_bootstrap_rate",
    "cohen_kappa",
    "count_labels",
    "earliest_unsafe_distribution",
    "earliest_unsafe_turn",
    "effective_size",
    "indicators_from_records",
    "intra_item_correlation",
    "majority_vote",
    "partial_note",
    "per_draw_rate",
    "rate",
    "run_safety_index",
    "safety_index",
    "seed_instability",
    "siuo_scores",
    "turn_weights",
    "unsafe_by_item",
    "wilson_bounds",
    "win_rate",
]
