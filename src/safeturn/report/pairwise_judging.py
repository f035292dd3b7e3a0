"""Judge two runs pairwise: A's win rate over B on the samples both answered.

`safeturn compare --pairwise` and the closed loop's report both call `judge_runs_pairwise`;
the matching and the report itself live in `report.pairwise`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safeturn.judges.pairwise import PairVerdict
    from safeturn.report.pairwise import PairwiseReport
    from safeturn.run.results import RunResults


def judge_runs_pairwise(
    a: RunResults,
    b: RunResults,
    spec: str,
    *,
    concurrency: int,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[PairVerdict], None] | None = None,
) -> PairwiseReport:
    """A's win rate over B by the pairwise judge `spec`, on samples matched by id.

    Args:
        a: The run whose win rate is reported.
        b: The run it is compared with.
        spec: A pairwise judge spec (`classifier`, `pairwise:<model spec>`).
        concurrency: Pairwise judgements in flight.
        on_start: Called once with the number of pairs to judge (for a progress bar).
        on_done: Called with each verdict as it arrives.
    """
    from safeturn.judges import judge_pairs, load_pairwise_judge
    from safeturn.report.pairwise import match_runs, pairwise_report

    judge = load_pairwise_judge(spec)
    match = match_runs(a, b)
    if on_start is not None:
        on_start(len(match.requests))

    async def go() -> list[PairVerdict]:
        try:
            return await judge_pairs(
                judge, match.requests, concurrency=concurrency, on_done=on_done
            )
        finally:
            await judge.aclose()

    return pairwise_report(a, b, judge.name, match, asyncio.run(go()))
