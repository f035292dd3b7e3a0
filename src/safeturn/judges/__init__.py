"""Judges: decide per turn whether a model's reply is safe.

Select one with a spec string (`load_judge`), e.g. `refusal`, `classifier-v2` (fine-tuned,
reads every user turn) or `safemt:<model spec>`; pairwise judges (which of two replies is safer
and still helpful) have their own specs (`load_pairwise_judge`). Both kinds are registries
(`specs.JUDGES`, `specs.PAIRWISE_JUDGES`): `safeturn judge list` prints every one, and a judge
is added by one module that registers it.
"""

from __future__ import annotations

from safeturn.judges.base import Judge
from safeturn.judges.pairwise import PairRequest, PairVerdict, PairwiseJudge, judge_pairs
from safeturn.judges.refusal import RefusalJudge, detect_refusal


def load_judge(spec: str) -> Judge:
    """Build a judge from its spec string (model specs inside it may contain ':' and '#')."""
    from safeturn.judges.specs import parse_judge_spec

    return parse_judge_spec(spec)


def load_pairwise_judge(spec: str) -> PairwiseJudge:
    """Build a pairwise judge from its spec string (`classifier[:margin]`, `pairwise:<model>`)."""
    from safeturn.judges.specs import parse_pairwise_spec

    return parse_pairwise_spec(spec)


__all__ = [
    "Judge",
    "PairRequest",
    "PairVerdict",
    "PairwiseJudge",
    "RefusalJudge",
    "detect_refusal",
    "judge_pairs",
    "load_judge",
    "load_pairwise_judge",
]
