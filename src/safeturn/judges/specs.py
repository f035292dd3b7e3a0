"""Judge spec strings → judges.

- `refusal`                         the offline refusal / referral detector
- `classifier-v2`                   the fine-tuned reply judge over all user turns and the reply
                                    (`judges.reply_judge`; the default)
- `classifier`                      the first embedded judge: frozen embeddings + logistic head
- `safemt:<model spec>`             the SafeMT rule asked of a model
- `turn-scores:<model spec>`        per-turn helpfulness and harmlessness
- `siuo:<model spec>`               SIUO safe + effective
- `llamaguard:<model spec>`         Llama Guard 3/4 format (`safe` / `unsafe` + S1–S14), our
                                    prompt as one user message
- `llamaguard-chat:<model spec>`    the raw conversation as chat messages, for a Llama Guard
                                    served with its own chat template (e.g. by vLLM)
- `harmbench:<model spec>`          HarmBench classifier format: behavior + generation, yes / no
- `strongreject:<model spec>`       StrongREJECT rubric: score in [0, 1], unsafe at >= 0.5
- `ensemble:<spec>+<spec>...`       majority vote (a tie is unsafe)
- `ensemble-any-unsafe:<spec>+...`  unsafe when any judge says so

Pairwise judges (`parse_pairwise_spec`, for `safeturn compare --pairwise`):

- `classifier` / `classifier:<margin>`  offline, by the classifier's harm scores
- `pairwise:<model spec>`               our pairwise prompt asked of a model, both orders

Model specs hold `:` and `#` (`safemt:openai:http://host:8000/v1#model`), so a spec is split on
its first `:` only; ensemble members are split on `+` and cannot be ensembles themselves.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

from safeturn.errors import ModelSpecError
from safeturn.judges.base import Judge
from safeturn.judges.ensemble import EnsembleJudge, EnsembleRule
from safeturn.judges.formats import (
    HarmBenchJudge,
    LlamaGuardChatJudge,
    LlamaGuardJudge,
    StrongRejectJudge,
)
from safeturn.judges.pairwise import (
    DEFAULT_MARGIN,
    LLMPairwiseJudge,
    PairwiseJudge,
    ScorePairwiseJudge,
)
from safeturn.judges.refusal import RefusalJudge
from safeturn.judges.safemt import SafeMTJudge
from safeturn.judges.siuo import SiuoJudge
from safeturn.judges.turn_scores import TurnScoresJudge
from safeturn.models.spec import load_model


class JudgeSpecInfo(NamedTuple):
    """What a help listing prints about one kind of judge spec."""

    example: str
    summary: str


JUDGE_SPECS: tuple[JudgeSpecInfo, ...] = (
    JudgeSpecInfo("refusal", "offline refusal / referral phrases; no model"),
    JudgeSpecInfo("classifier-v2", "fine-tuned reply judge over all user turns; offline"),
    JudgeSpecInfo("classifier", "first embedded judge (embeddings + logistic head); offline"),
    JudgeSpecInfo("safemt:openai:http://localhost:8000/v1#judge", "SafeMT rule by scenario"),
    JudgeSpecInfo("turn-scores:embedded", "helpfulness and harmlessness in [0, 1] per turn"),
    JudgeSpecInfo("siuo:openai:http://localhost:8000/v1#judge", "SIUO safe + effective"),
    JudgeSpecInfo(
        "llamaguard:openai:http://localhost:8000/v1#judge", "Llama Guard format, our prompt"
    ),
    JudgeSpecInfo(
        "llamaguard-chat:openai:http://localhost:8000/v1#meta-llama/Llama-Guard-3-8B",
        "Llama Guard served with its chat template",
    ),
    JudgeSpecInfo("harmbench:openai:http://localhost:8000/v1#judge", "HarmBench yes / no"),
    JudgeSpecInfo(
        "strongreject:openai:http://localhost:8000/v1#judge", "StrongREJECT score in [0, 1]"
    ),
    JudgeSpecInfo("ensemble:refusal+safemt:embedded", "majority vote of judges (tie: unsafe)"),
    JudgeSpecInfo("ensemble-any-unsafe:refusal+classifier", "unsafe if any judge says so"),
)

PAIRWISE_SPECS: tuple[JudgeSpecInfo, ...] = (
    JudgeSpecInfo("classifier", "offline: lower classifier harm score wins; ties within 0.1"),
    JudgeSpecInfo("classifier:0.05", "the same with another tie margin"),
    JudgeSpecInfo("pairwise:openai:http://localhost:8000/v1#judge", "a model picks, both orders"),
)

_MODEL_JUDGES: dict[str, Callable[..., Judge]] = {
    "safemt": SafeMTJudge,
    "turn-scores": TurnScoresJudge,
    "siuo": SiuoJudge,
    "llamaguard": LlamaGuardJudge,
    "llamaguard-chat": LlamaGuardChatJudge,
    "harmbench": HarmBenchJudge,
    "strongreject": StrongRejectJudge,
}
_ENSEMBLES: dict[str, EnsembleRule] = {"ensemble": "majority", "ensemble-any-unsafe": "any-unsafe"}


def parse_judge_spec(spec: str, **model_options: Any) -> Judge:
    """Build the judge a spec string names.

    Args:
        spec: A judge spec (see the module docstring).
        model_options: Passed to `load_model` for every judge model the spec names.

    Returns:
        The judge.

    Raises:
        ModelSpecError: The spec is malformed or names no known judge or model backend.
        PrerequisiteError: A backend's dependency is missing (raised by the backend).

    Examples:
        >>> parse_judge_spec("safemt:scripted:refuse").name
        'safemt:scripted:refuse'
    """
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if spec == "refusal":
        return RefusalJudge()
    if spec == "classifier":
        return _classifier()
    if spec == "classifier-v2":
        from safeturn.judges.reply_judge import ReplyJudge

        return ReplyJudge()
    if kind in _MODEL_JUDGES:
        if not rest:
            raise ModelSpecError(
                f"judge {spec!r} needs a model spec, e.g. {kind}:openai:http://host:8000/v1#model"
            )
        return _MODEL_JUDGES[kind](load_model(rest, **model_options))
    if kind in _ENSEMBLES and sep:
        return _ensemble(rest, _ENSEMBLES[kind], model_options)
    known = "refusal, classifier-v2, classifier, " + ", ".join(
        f"{k}:<...>" for k in [*_MODEL_JUDGES, *_ENSEMBLES]
    )
    raise ModelSpecError(f"unknown judge spec {spec!r}; expected one of {known}")


def parse_pairwise_spec(spec: str, **model_options: Any) -> PairwiseJudge:
    """Build the pairwise judge a spec string names (see the module docstring).

    Raises:
        ModelSpecError: The spec is malformed or names no known pairwise judge or model backend.

    Examples:
        >>> parse_pairwise_spec("pairwise:scripted:refuse").name
        'pairwise:scripted:refuse'
    """
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if kind == "classifier":
        margin = DEFAULT_MARGIN
        if sep:
            try:
                margin = float(rest)
            except ValueError:
                margin = -1.0
            if not 0.0 <= margin <= 1.0:
                raise ModelSpecError(f"{spec!r}: the tie margin must be a number in [0, 1]")
        return ScorePairwiseJudge(_classifier(), margin=margin)
    if kind == "pairwise":
        if not rest:
            raise ModelSpecError(
                "pairwise judge needs a model spec, e.g. pairwise:openai:http://host:8000/v1#m"
            )
        return LLMPairwiseJudge(load_model(rest, **model_options))
    raise ModelSpecError(
        f"unknown pairwise judge spec {spec!r}; expected classifier, classifier:<margin> or "
        "pairwise:<model spec>"
    )


def _ensemble(rest: str, rule: EnsembleRule, model_options: dict[str, Any]) -> Judge:
    members = [part.strip() for part in rest.split("+")]
    if len(members) < 2 or not all(members):
        raise ModelSpecError(
            f"ensemble spec {rest!r} needs two or more judge specs joined by '+', "
            "e.g. ensemble:refusal+safemt:embedded"
        )
    nested = [m for m in members if m.partition(":")[0] in _ENSEMBLES]
    if nested:
        raise ModelSpecError(f"ensembles cannot be nested; got {nested[0]!r} inside one")
    judges = [parse_judge_spec(member, **model_options) for member in members]
    try:
        return EnsembleJudge(judges, rule)
    except ValueError as exc:
        raise ModelSpecError(f"ensemble spec {rest!r}: {exc}") from exc


def _classifier() -> Judge:
    try:
        module = importlib.import_module("safeturn.judges.classifier")
    except ModuleNotFoundError as exc:
        if exc.name != "safeturn.judges.classifier":
            raise
        raise ModelSpecError(
            "the 'classifier' judge is not available in this version of safeturn "
            "(safeturn.judges.classifier is missing)"
        ) from exc
    factory: Callable[[], Any] = module.ClassifierJudge
    judge = factory()
    if not isinstance(judge, Judge):
        raise ModelSpecError("safeturn.judges.classifier.ClassifierJudge is not a Judge")
    return judge
