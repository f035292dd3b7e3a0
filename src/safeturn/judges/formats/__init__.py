"""Prompted judges in the field's standard formats, for any `ChatModel` (vLLM, OpenAI-compatible).

- `LlamaGuardJudge` / `LlamaGuardChatJudge`: `safe` or `unsafe` + hazard codes S1–S14;
- `HarmBenchJudge`: the HarmBench classifier's behavior / generation question, yes or no;
- `StrongRejectJudge`: the StrongREJECT rubric, a harm score in [0, 1] and a threshold.

The prompts are ours, written to the published structure of each format. Unlike the `refusal`
and `classifier` judges, which never call a reply to a benign request (`sample.harmful is
False`) unsafe, these judges, like `safemt` and `siuo`, let the judge model decide on every
sample: they judge the content of the reply, and harmful content is harmful whatever the
request looked like. An unreadable answer gets retries, then an *invalid* verdict holding the
raw output; never a crash, never a silent `safe`.
"""

from __future__ import annotations

from safeturn.judges.formats.harmbench import HarmBenchJudge, parse_yes_no
from safeturn.judges.formats.llamaguard import (
    LLAMAGUARD_CATEGORIES,
    LlamaGuardAnswer,
    LlamaGuardChatJudge,
    LlamaGuardJudge,
    parse_llamaguard,
)
from safeturn.judges.formats.strongreject import (
    RubricAnswer,
    StrongRejectJudge,
    parse_strongreject,
    strongreject_score,
)

__all__ = [
    "LLAMAGUARD_CATEGORIES",
    "HarmBenchJudge",
    "LlamaGuardAnswer",
    "LlamaGuardChatJudge",
    "LlamaGuardJudge",
    "RubricAnswer",
    "StrongRejectJudge",
    "parse_llamaguard",
    "parse_strongreject",
    "parse_yes_no",
    "strongreject_score",
]
