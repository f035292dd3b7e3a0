"""Evaluate the moderator on held-out seeds, beside a single-message guard and a keyword filter.

The held-out dialogues are rebuilt from the plan recorded in the model's metadata (seed, caps,
image share), so `test` means seeds the model never saw. Three methods score the same
dialogues, each after every user turn:

- `moderator`: the whole dialogue so far (the deployed fast stage).
- `single-message`: the same trained classifier on each user message *alone* (its images
  included); a dialogue is flagged at the first message that crosses the threshold. Its
  `last-message` variant ranks dialogues by the final message only, what a guard that sees
  just the incoming request would do.
- `keyword`: a blocklist over every user turn and image text so far (see `keywords.py`).

Metrics: AUROC and TPR at 5 % FPR (dialogue level); TPR/FPR at the operating threshold; how
early a harmful multi-turn dialogue is flagged (turns before its final question); category and
strategy accuracy on harmful dialogues; and the same split by attack strategy.

`eval_file.py` runs the same methods on any labelled JSONL file (`safeturn guard eval --data`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from safeturn.guard.dataset import GuardExample, SeedPlan, load_examples
from safeturn.guard.encoder import model_encoder
from safeturn.guard.images import ImageAnalyzer
from safeturn.guard.keywords import keyword_hits, keyword_score
from safeturn.guard.model import DEFAULT_MODEL_PATH, ModeratorModel
from safeturn.guard.moderator import DialogueModerator
from safeturn.guard.reader import Progress, prime
from safeturn.metrics.roc import auroc, rate, tpr_at_fpr
from safeturn.schema import Dialogue, Message, Sample
from safeturn.taxonomy import Category

logger = logging.getLogger(__name__)

FPR_BUDGET = 0.05
Array = npt.NDArray[np.float64]
METHODS = ("moderator", "single-message", "last-message", "keyword")


class Example(Protocol):
    """What the evaluation reads of a labelled dialogue.

    Both `dataset.GuardExample` (held-out seeds, built here) and
    `labelled.LabelledConversation` (a user's file) provide it.
    """

    @property
    def sample(self) -> Sample:
        """The dialogue, ending with the user turn to be answered, and its id."""
        ...

    @property
    def harmful(self) -> bool:
        """The dialogue-level label."""
        ...

    @property
    def source(self) -> str:
        """Where the dialogue came from (reports are split by it)."""
        ...

    @property
    def category(self) -> Category | None:
        """The true risk category of a harmful dialogue, where known."""
        ...

    @property
    def strategy(self) -> str | None:
        """The attack strategy that built it, where known."""
        ...

    @property
    def turns(self) -> int:
        """User turns."""
        ...

    @property
    def surfaced_turn(self) -> int:
        """The first user turn carrying the harmful content (the last turn when unknown)."""
        ...


@dataclass(frozen=True)
class MethodRun:
    """One method's scores on every example."""

    name: str
    turn_scores: list[Array]
    """Per example: the score after each user turn; a dialogue is flagged at the first turn
    whose score reaches the threshold (-inf where a method does not look at that turn)."""
    scores: Array
    """Per example: the dialogue-level score used for ranking (flagged iff >= threshold)."""
    threshold: float
    categories: Sequence[Category | None]
    strategies: Sequence[str | None]


def run_moderator(
    moderator: DialogueModerator, examples: Sequence[Example], threshold: float | None = None
) -> MethodRun:
    """The moderator on each whole dialogue, flagging at `threshold` (default: the model's)."""
    turns, scores, categories, strategies = [], [], [], []
    for example in examples:
        reading = moderator.read(example.sample.dialogue, moderator.new_state())
        risks = np.asarray(reading.result.turn_risks, dtype=np.float64)
        turns.append(risks)
        scores.append(float(risks[-1]))  # risks are cumulative: the last is the maximum
        categories.append(reading.top_category)
        strategies.append(reading.top_strategy)
    cut = moderator.threshold if threshold is None else threshold
    return MethodRun("moderator", turns, np.asarray(scores), cut, categories, strategies)


def run_single_message(
    moderator: DialogueModerator, examples: Sequence[Example], threshold: float | None = None
) -> tuple[MethodRun, MethodRun]:
    """The classifier on each user message alone: (any message flags, last message only)."""
    every, last, any_scores, last_scores, categories, strategies = [], [], [], [], [], []
    for example in examples:
        risks = []
        reading = None
        for message in example.sample.dialogue.messages:
            if message.role == "user":
                alone = Dialogue(messages=[Message(role="user", parts=message.parts)])
                reading = moderator.read(alone, moderator.new_state())
                risks.append(reading.result.risk)
        assert reading is not None
        array = np.asarray(risks, dtype=np.float64)
        every.append(array)
        only_last = np.full(len(array), -np.inf)
        only_last[-1] = array[-1]
        last.append(only_last)
        any_scores.append(float(array.max()))
        last_scores.append(float(array[-1]))
        categories.append(reading.top_category)
        strategies.append(reading.top_strategy)
    threshold = moderator.threshold if threshold is None else threshold
    return (
        MethodRun(
            "single-message", every, np.asarray(any_scores), threshold, categories, strategies
        ),
        MethodRun("last-message", last, np.asarray(last_scores), threshold, categories, strategies),
    )


def run_keywords(images: ImageAnalyzer, examples: Sequence[Example]) -> MethodRun:
    """The keyword filter over all user text and image text so far."""
    turns, scores, categories = [], [], []
    for example in examples:
        texts: list[str] = []
        per_turn = []
        for i, message in enumerate(example.sample.dialogue.messages):
            if message.role != "user":
                continue
            texts.append(message.text)
            texts += [
                images.analyze(img, f"{example.sample.id} message {i} image {j}").text
                for j, img in enumerate(message.images)
            ]
            per_turn.append(float(keyword_score(keyword_hits(texts))[0]))
        total, category = keyword_score(keyword_hits(texts))
        turns.append(np.asarray(per_turn))
        scores.append(float(total))
        categories.append(category)
    none: list[str | None] = [None] * len(examples)
    return MethodRun("keyword", turns, np.asarray(scores), 1.0, categories, none)


def earliest_detection(
    run: MethodRun, examples: Sequence[Example], threshold: float
) -> dict[str, Any]:
    """How early harmful multi-turn dialogues are flagged at `threshold`.

    `earliest_turn_distribution` counts the flagged ones by the first user turn (1-based) at
    which they crossed the threshold.
    """
    leads, before_final, by_surfaced, detected, firsts = [], [], [], [], []
    for example, scores in zip(examples, run.turn_scores, strict=True):
        if not example.harmful or example.turns < 2:
            continue
        hits = np.flatnonzero(scores >= threshold)
        detected.append(hits.size > 0)
        earliest = int(hits[0]) + 1 if hits.size else None
        before_final.append(earliest is not None and earliest < example.turns)
        by_surfaced.append(earliest is not None and earliest <= example.surfaced_turn)
        if earliest is not None:
            leads.append(example.turns - earliest)
            firsts.append(earliest)
    return {
        "threshold": threshold,
        "multi_turn_harmful": len(detected),
        "detected": rate(detected),
        "flagged_before_final_turn": rate(before_final),
        "flagged_by_surfaced_turn": rate(by_surfaced),
        "mean_turns_before_final": float(np.mean(leads)) if leads else None,
        "earliest_turn_mean": float(np.mean(firsts)) if firsts else None,
        "earliest_turn_distribution": {str(t): firsts.count(t) for t in sorted(set(firsts))},
    }


def summarize(run: MethodRun, examples: Sequence[Example]) -> dict[str, Any]:
    """The metrics of one method (see the module docstring).

    `earliest` is measured at the method's operating threshold, `earliest_at_5fpr` at the
    threshold that flags 5 % of these benign dialogues, so methods compare at equal cost.
    """
    harmful = np.array([e.harmful for e in examples], dtype=bool)
    tpr, at = tpr_at_fpr(harmful, run.scores, FPR_BUDGET)
    flagged = run.scores >= run.threshold
    known = [
        (e.category, c)
        for e, c in zip(examples, run.categories, strict=True)
        if e.harmful and e.category
    ]
    strategy_pairs = [
        (e.strategy, s)
        for e, s in zip(examples, run.strategies, strict=True)
        if e.harmful and e.strategy is not None
    ]
    return {
        "auroc": auroc(harmful, run.scores),
        "tpr_at_5fpr": tpr,
        "tpr_at_5fpr_threshold": at,
        "threshold": run.threshold,
        "tpr": rate(flagged[harmful]),
        "fpr": rate(flagged[~harmful]),
        "earliest": earliest_detection(run, examples, run.threshold),
        "earliest_at_5fpr": earliest_detection(run, examples, at),
        "category_accuracy": rate([truth == guess for truth, guess in known]),
        "category_n": len(known),
        "strategy_accuracy": (
            rate([truth == guess for truth, guess in strategy_pairs])
            if any(s is not None for _, s in strategy_pairs)
            else None
        ),
        "strategy_n": len(strategy_pairs),
    }


def run_methods(
    moderator: DialogueModerator, examples: Sequence[Example], threshold: float | None = None
) -> list[MethodRun]:
    """Every method on `examples`, in `METHODS` order (caches primed first)."""
    prime(moderator.reader, [e.sample.dialogue for e in examples])
    return [
        run_moderator(moderator, examples, threshold),
        *run_single_message(moderator, examples, threshold),
        run_keywords(moderator.images, examples),
    ]


def evaluate_examples(
    moderator: DialogueModerator,
    examples: Sequence[GuardExample],
    threshold: float | None = None,
) -> dict[str, Any]:
    """Every method's metrics on `examples`, overall and per strategy (caches primed first)."""
    runs = run_methods(moderator, examples, threshold)
    report: dict[str, Any] = {
        "n": {
            "dialogues": len(examples),
            "harmful": sum(e.harmful for e in examples),
            "benign": sum(not e.harmful for e in examples),
            "seeds": len({e.seed_id for e in examples}),
        },
        "methods": {run.name: summarize(run, examples) for run in runs},
    }
    by_strategy: dict[str, dict[str, Any]] = {}
    for strategy in sorted({e.strategy for e in examples}):
        index = [i for i, e in enumerate(examples) if e.strategy == strategy]
        subset = [examples[i] for i in index]
        by_strategy[strategy] = {"n": len(subset)}
        for run in runs:
            if run.name == "last-message":
                continue
            part = subset_run(run, index)
            summary = summarize(part, subset)
            by_strategy[strategy][run.name] = {
                k: summary[k] for k in ("auroc", "tpr", "fpr", "strategy_accuracy")
            }
    report["by_strategy"] = by_strategy
    moderator_run = runs[0]
    by_source: dict[str, dict[str, Any]] = {}
    for source in sorted({e.source for e in examples}):
        for harmful in (True, False):
            flags = [
                bool(score >= moderator_run.threshold)
                for e, score in zip(examples, moderator_run.scores, strict=True)
                if e.source == source and e.harmful is harmful
            ]
            if flags:
                key = f"{source}/{'harmful' if harmful else 'benign'}"
                by_source[key] = {"n": len(flags), "flagged": rate(flags)}
    report["moderator_by_source"] = by_source
    return report


def subset_run(run: MethodRun, index: Sequence[int]) -> MethodRun:
    """`run` restricted to the examples at `index`, in that order."""
    return MethodRun(
        run.name,
        [run.turn_scores[i] for i in index],
        run.scores[list(index)],
        run.threshold,
        [run.categories[i] for i in index],
        [run.strategies[i] for i in index],
    )


def plan_of(model: ModeratorModel) -> SeedPlan:
    """The seed plan a model was trained with (from its metadata), restricted to `test`."""
    meta = model.metadata.get("plan")
    if not isinstance(meta, dict):
        return SeedPlan(splits=("test",))
    return SeedPlan(
        seed=int(meta["seed"]),
        caps={str(k): int(v) for k, v in meta["caps"].items()},
        image_fraction=float(meta["image_fraction"]),
        strategies_per_image_seed=int(meta["strategies_per_image_seed"]),
        splits=("test",),
    )


ModeratorFactory = Callable[[ModeratorModel], DialogueModerator]
"""Builds the moderator from the loaded model (tests inject stubs)."""


def build_moderator(
    model: ModeratorModel, *, nudity: bool = True, factory: ModeratorFactory | None = None
) -> DialogueModerator:
    """The deployed moderator with unbounded caches, so priming embeds every text once."""
    if factory is not None:
        return factory(model)
    images = ImageAnalyzer(nudity=None if nudity else (lambda _pixels: 0.0), capacity=None)
    return DialogueModerator(model, encoder=model_encoder(model, capacity=None), images=images)


def evaluate(
    data_root: Path,
    model_path: Path = DEFAULT_MODEL_PATH,
    *,
    out: Path | None = None,
    nudity: bool = True,
    threshold: float | None = None,
    progress: Progress | None = None,
    moderator_factory: ModeratorFactory | None = None,
) -> dict[str, Any]:
    """Rebuild the model's held-out test dialogues and evaluate every method on them.

    Args:
        data_root: The folder holding figstep/, xstest/, harmbench/, ... (read in place).
        model_path: The moderator model to evaluate.
        out: Where to write the JSON report (optional).
        nudity: Run NudeNet on the images, as the deployed moderator does.
        threshold: Flag at this risk instead of the model's threshold.
        progress: Called as caches are primed.
        moderator_factory: Builds the moderator from the model (tests inject stubs).

    Raises:
        PrerequisiteError: The model or the data is missing.
    """
    start = time.perf_counter()
    model = ModeratorModel.load(model_path)
    plan = plan_of(model)
    examples = load_examples(data_root, plan)
    moderator = build_moderator(model, nudity=nudity, factory=moderator_factory)
    prime(moderator.reader, [e.sample.dialogue for e in examples], progress)
    report = evaluate_examples(moderator, examples, threshold)
    report["model"] = str(model_path)
    report["plan"] = {"seed": plan.seed, "split": "test"}
    report["fpr_budget"] = FPR_BUDGET
    report["seconds"] = round(time.perf_counter() - start, 1)
    if out is not None:
        write_report(report, out)
    return report


def write_report(report: dict[str, Any], out: Path) -> None:
    """Write `report` as indented JSON, creating the folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
