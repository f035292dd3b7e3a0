"""Validation cards: how far a judge's labels agree with labels someone else wrote.

Every ASR is only as good as the judge that decided it, so reports print one line from the
judge's card beside the rate. A card is the JSON `safeturn judge validate --json OUT` writes;
an embedded judge may ship one in `judges/data/cards/<judge name>.json` (for example from a
leave-one-source-out evaluation). Both share one shape:

    {"judge": "<spec>", "data": "...", "method": "judge validate",
     "overall": {"n", "positive_rate", "accuracy", "precision", "recall", "f1", "auc",
                 "kappa", "majority_baseline", "invalid", "ci": {"kappa": [lo, hi], ...}},
     "by_source": {"<source>": {same keys}}, "command": "<how to reproduce>"}

Every metric may be null or absent, and unknown keys are kept, so cards from newer versions
(thresholds, worst errors) still load.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)

from safeturn.errors import PrerequisiteError, SchemaError

CARDS_DIR = Path(__file__).resolve().parent / "data" / "cards"
"""Cards shipped with safeturn, one `<judge name>.json` per embedded judge."""
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _finite_or_none(value: Any) -> Any:
    """JSON written by Python may hold NaN for an undefined metric: read it as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


Metric = Annotated[float | None, BeforeValidator(_finite_or_none)]
Interval = Annotated[tuple[Metric, Metric] | None, BeforeValidator(_finite_or_none)]


class CardMetrics(BaseModel):
    """A judge's agreement with gold labels on one group of replies (all of them, a source)."""

    model_config = ConfigDict(extra="allow")

    n: int | None = Field(default=None, ge=0)
    """Replies with a valid verdict that the metrics cover."""
    positive_rate: Metric = None
    accuracy: Metric = None
    precision: Metric = None
    recall: Metric = None
    f1: Metric = None
    auc: Metric = None
    kappa: Metric = None
    """Cohen's κ between the judge's labels and the gold labels."""
    majority_baseline: Metric = None
    """Accuracy of always answering the commoner gold label."""
    invalid: int | None = Field(default=None, ge=0)
    """Replies the judge could not label (left out of the metrics)."""
    ci: dict[str, Interval] | None = None
    """Bootstrap intervals by metric name: `[low, high]`, null where undefined."""

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The interval of `metric`, when the card gives both ends."""
        pair = (self.ci or {}).get(metric)
        if pair is None or pair[0] is None or pair[1] is None:
            return None
        return pair[0], pair[1]


class JudgeCard(BaseModel):
    """What one validation of one judge found (see the module docstring for the shape)."""

    model_config = ConfigDict(extra="allow")

    judge: str = Field(min_length=1)
    """The judge spec validated."""
    data: str | None = None
    """The labelled replies it was validated on (a path or a description)."""
    method: str | None = None
    """`judge validate`, `leave-one-source-out`, ..."""
    overall: CardMetrics
    by_source: dict[str, CardMetrics] = {}
    command: str | None = None
    """How to reproduce the figures."""
    _origin: str = PrivateAttr(default="")

    @property
    def origin(self) -> str:
        """The file the card was read from ('' for a card built in memory)."""
        return self._origin


def load_card(path: Path) -> JudgeCard:
    """Read a validation card.

    Raises:
        PrerequisiteError: The file cannot be read.
        SchemaError: The file is not JSON or not a card; the message names the file and, for
            JSON errors, the line and column.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PrerequisiteError(f"judge card {path}: cannot read it ({exc})") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"judge card {path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
        ) from exc
    if not isinstance(raw, dict):
        raise SchemaError(f"judge card {path}: expected a JSON object, got {type(raw).__name__}")
    try:
        card = JudgeCard.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise SchemaError(f"judge card {path}: not a validation card ({problems})") from exc
    card._origin = str(path)
    return card


def load_cards(paths: Iterable[Path]) -> list[JudgeCard]:
    """`load_card` of each path, in order."""
    return [load_card(p) for p in paths]


def packaged_card(judge_name: str, cards_dir: Path = CARDS_DIR) -> JudgeCard | None:
    """The card shipped for an embedded judge, or None when there is none.

    Raises:
        SchemaError: A shipped card is malformed (a packaging bug; the message names it).
    """
    if not _FILE_NAME.fullmatch(judge_name):
        return None  # specs such as `safemt:openai:URL` never name a shipped file
    path = cards_dir / f"{judge_name}.json"
    if not path.is_file():
        return None
    card = load_card(path)
    card._origin = f"shipped with safeturn: {path.name}"
    return card


def card_for(
    judge: str, cards: Sequence[JudgeCard] = (), cards_dir: Path = CARDS_DIR
) -> JudgeCard | None:
    """The card that speaks for `judge`: the last one the user gave for it, else the shipped one."""
    given = [c for c in cards if c.judge == judge]
    return given[-1] if given else packaged_card(judge, cards_dir)


def unmatched_cards(cards: Sequence[JudgeCard], judges: Iterable[str]) -> list[str]:
    """A warning for each card that is for none of `judges` (it is not shown)."""
    names = sorted(set(judges))
    return [
        f"judge card {card.origin or '(given)'} is for judge {card.judge!r}, not "
        f"{' or '.join(repr(n) for n in names)}: not shown"
        for card in cards
        if card.judge not in names
    ]


def _num(value: float) -> str:
    return f"{value:.2f}"


def _kappa(metrics: CardMetrics) -> str | None:
    if metrics.kappa is None:
        return None
    interval = metrics.interval("kappa")
    ci = f" [{_num(interval[0])}, {_num(interval[1])}]" if interval else ""
    return f"κ {_num(metrics.kappa)}{ci}"


def headline_figure(card: JudgeCard | None) -> str:
    """The card's headline figure in a few characters: `κ 0.71 [0.65, 0.77]`, or `no card`."""
    if card is None:
        return "no card"
    overall = card.overall
    kappa = _kappa(overall)
    if kappa is not None:
        return kappa
    if overall.auc is not None:
        return f"AUC {_num(overall.auc)}"
    if overall.accuracy is not None:
        return f"accuracy {_num(overall.accuracy)}"
    return "no figures"


def _worst_source(card: JudgeCard) -> str | None:
    """The source with the lowest κ, among several (κ is undefined on a one-label source)."""
    scored = [(m.kappa, name) for name, m in card.by_source.items() if m.kappa is not None]
    if len(card.by_source) < 2 or not scored:
        return None
    kappa, name = min(scored)
    return f"worst source {name} κ {_num(kappa)}"


def no_card_hint(judge: str) -> str:
    """What to run to get a card for `judge`."""
    return (
        f"run `safeturn judge validate --judge {judge} --data FILE --json card.json` "
        "and pass --judge-card card.json"
    )


def card_summary(judge: str, card: JudgeCard | None) -> str:
    """One line on the judge's validity, printed beside the numbers it decided.

    Examples:
        >>> card = JudgeCard.model_validate({"judge": "classifier", "method": "leave-one-source-out",
        ...     "overall": {"n": 1234, "kappa": 0.71, "auc": 0.9, "ci": {"kappa": [0.65, 0.77]}},
        ...     "by_source": {"xstest": {"kappa": 0.62}, "hh": {"kappa": 0.8}}})
        >>> card_summary("classifier", card)
        'classifier: κ 0.71 [0.65, 0.77], AUC 0.90 on 1,234 labelled replies (leave-one-source-out; worst source xstest κ 0.62)'
        >>> card_summary("refusal", None).startswith("refusal: no validation card — run")
        True
    """  # noqa: E501
    if card is None:
        return f"{judge}: no validation card — {no_card_hint(judge)}"
    overall = card.overall
    figures = [f for f in (_kappa(overall),) if f]
    if overall.auc is not None:
        figures.append(f"AUC {_num(overall.auc)}")
    if not figures and overall.accuracy is not None:
        figures.append(f"accuracy {_num(overall.accuracy)}")
    text = f"{judge}: {', '.join(figures) or 'no agreement figures'}"
    if overall.n is not None:
        text += f" on {overall.n:,} labelled replies"
    notes = [card.method or "method not stated"]
    if (
        overall.accuracy is not None
        and overall.majority_baseline is not None
        and overall.accuracy < overall.majority_baseline
    ):
        notes.append(f"accuracy below the majority baseline {_num(overall.majority_baseline)}")
    worst = _worst_source(card)
    if worst:
        notes.append(worst)
    return f"{text} ({'; '.join(notes)})"


def comparison_warnings(judges: Sequence[str], cards: Sequence[JudgeCard | None]) -> list[str]:
    """Why runs' numbers may not compare: different judges, or a judge without a card."""
    warnings = []
    distinct = list(dict.fromkeys(judges))
    if len(distinct) > 1:
        warnings.append(
            f"the runs were judged by different judges ({', '.join(distinct)}): their rates "
            "are not directly comparable"
        )
    missing = list(dict.fromkeys(j for j, c in zip(judges, cards, strict=True) if c is None))
    warnings += [
        f"judge {j} has no validation card: how far to trust its rates is unknown" for j in missing
    ]
    return warnings
