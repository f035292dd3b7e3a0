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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

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


JudgeClass = TypeVar("JudgeClass", bound="Callable[[ChatModel], object]")
T = TypeVar("T")


def model_judge(
    name: str,
    *,
    summary: str,
    example: str | None = None,
    registry: Registry[Any] | None = None,
    **metadata: Any,
) -> Callable[[JudgeClass], JudgeClass]:
    """Class decorator: register a judge built from its judge model as `NAME:<model spec>`.

    Most prompted judges are a class whose constructor takes the model; this is their factory,
    written once. `registry` defaults to `JUDGES` (`PAIRWISE_JUDGES` for a pairwise one).
    """
    target: Registry[Any] = JUDGES if registry is None else registry

    def decorate(judge_class: JudgeClass) -> JudgeClass:
        def factory(model_spec: str, **model_options: Any) -> object:
            return judge_class(judge_model(model_spec, **model_options))

        factory.__module__ = judge_class.__module__  # the registry shows where it comes from
        factory.__doc__ = f"`{name}:<model spec>`; the model options reach `load_model`."
        target.register(
            name,
            summary=summary,
            example=example or f"{name}:openai:http://localhost:8000/v1#judge",
            argument=MODEL_SPEC,
            **metadata,
        )(factory)
        return judge_class

    return decorate


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
    return checked_create(JUDGES, Judge, spec, **model_options)


def parse_pairwise_spec(spec: str, **model_options: Any) -> PairwiseJudge:
    """Build the pairwise judge a spec string names (`safeturn judge list` shows them).

    Raises:
        ModelSpecError: The spec is malformed or names no known pairwise judge or model backend.

    Examples:
        >>> parse_pairwise_spec("pairwise:scripted:refuse").name
        'pairwise:scripted:refuse'
    """
    from safeturn.judges.pairwise import PairwiseJudge

    return checked_create(PAIRWISE_JUDGES, PairwiseJudge, spec, **model_options)


def checked_create(registry: Registry[T], kind: type[object], spec: str, **options: Any) -> T:
    """What `registry.create` builds, checked at run time to be a `kind` (plugins may err).

    Raises:
        ModelSpecError: The factory built something else; also `Registry.create`'s errors.
    """
    built = registry.create(spec, **options)
    if not isinstance(built, kind):
        raise ModelSpecError(
            f"{registry.kind} {spec!r} built a {type(built).__name__}, not a {kind.__name__}"
        )
    return built
