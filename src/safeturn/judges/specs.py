"""Judge spec strings → judges, through the `JUDGES` and `PAIRWISE_JUDGES` registries.

Each judge family registers itself in its own module with `@JUDGES.register(...)` (see
`safeturn.registry`); `safeturn judge list` prints them all, built-in or from a plugin. A spec
is `NAME` or `NAME:ARGUMENT`, split on the first `:` only, because model specs hold `:` and `#`
(`safemt:openai:http://host:8000/v1#model`). Every factory takes the model options
(`timeout_s`, `max_retries`, ...) as keywords and passes them to `load_model` for each judge
model its spec names; a judge without a model ignores them.

Adding a judge is adding one module to `safeturn.judges` (or `safeturn.judges.formats`), or to
another package that declares it under the entry-point group `safeturn.judges`
(`safeturn.pairwise_judges` for pairwise judges). This module imports none of them: the
registries list the modules of both folders and import them the first time they are asked, so
`import safeturn.judges.specs` stays light.

Registration metadata the code reads: `composite=True` (an ensemble of other judges, which
cannot be nested), `risk_scorer=True` (also a `RiskScorer`, accepted by
`parse_risk_scorer_spec`) and `needs="local encoder"` (loads the embedded sentence encoder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safeturn.errors import ModelSpecError
from safeturn.judges.base import Judge
from safeturn.registry import Registry, modules_in

if TYPE_CHECKING:
    from safeturn.judges.pairwise import PairwiseJudge
    from safeturn.models.base import ChatModel

JUDGES: Registry[Judge] = Registry(
    "judge",
    builtins=modules_in("safeturn.judges") + modules_in("safeturn.judges.formats"),
    error=ModelSpecError,
)
"""Per-reply judges (`--judge`, `judge score`, `judge validate`)."""

PAIRWISE_JUDGES: Registry[PairwiseJudge] = Registry(
    "pairwise judge", builtins=JUDGES.builtins, error=ModelSpecError
)
"""Judges of which of two replies is safer (`safeturn compare --pairwise`)."""

MODEL_SPEC = "model spec"
"""The `argument` of a judge that asks a model: what follows `NAME:` is a model spec."""


def judge_model(model_spec: str, **model_options: Any) -> ChatModel:
    """The judge model a spec's argument names (`load_model`, imported only when used)."""
    from safeturn.models.spec import load_model

    return load_model(model_spec, **model_options)


def parse_judge_spec(spec: str, **model_options: Any) -> Judge:
    """Build the judge a spec string names (`safeturn judge list` shows them).

    Args:
        spec: A judge spec, e.g. `refusal` or `safemt:openai:http://host:8000/v1#judge`.
        model_options: Passed to `load_model` for every judge model the spec names.

    Raises:
        ModelSpecError: The spec is malformed or names no known judge or model backend.
        PrerequisiteError: A backend's dependency is missing (raised by the backend).

    Examples:
        >>> parse_judge_spec("safemt:scripted:refuse").name
        'safemt:scripted:refuse'
    """
    judge = JUDGES.create(spec, **model_options)
    if not isinstance(judge, Judge):
        raise ModelSpecError(f"judge {spec!r} built a {type(judge).__name__}, not a Judge")
    return judge


def parse_pairwise_spec(spec: str, **model_options: Any) -> PairwiseJudge:
    """Build the pairwise judge a spec string names (`safeturn judge list` shows them).

    Raises:
        ModelSpecError: The spec is malformed or names no known pairwise judge or model backend.

    Examples:
        >>> parse_pairwise_spec("pairwise:scripted:refuse").name
        'pairwise:scripted:refuse'
    """
    from safeturn.judges.pairwise import PairwiseJudge

    judge = PAIRWISE_JUDGES.create(spec, **model_options)
    if not isinstance(judge, PairwiseJudge):
        raise ModelSpecError(f"pairwise judge {spec!r} built a {type(judge).__name__}")
    return judge
