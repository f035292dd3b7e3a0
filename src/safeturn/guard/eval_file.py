"""`safeturn guard eval --data FILE`: the moderator and its baselines on a labelled file.

The methods are those of `evaluate.py` (moderator, single-message, last-message, keyword), run
on the conversations `labelled.read_labelled` accepted, and reported overall and per `source`
with 95 % intervals: a stratified bootstrap for AUROC and TPR at 5 % FPR (classes resampled
apart, so every resample can be ranked), Wilson intervals for the rates at a fixed threshold
(`metrics.rates`; a percentile bootstrap collapses to a point at 0 % or 100 %, which small
per-source counts often reach). A source holding one class has no AUROC of its own; it is
ranked against the other class pooled from the whole file (`auroc_vs_rest`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from safeturn.data.labelled import LabelledConversation, LabelledFile
from safeturn.guard.evaluate import (
    FPR_BUDGET,
    METHODS,
    Array,
    Example,
    MethodRun,
    ModeratorFactory,
    build_moderator,
    run_methods,
    subset_run,
    summarize,
    write_report,
)
from safeturn.guard.model import DEFAULT_MODEL_PATH, ModeratorModel
from safeturn.guard.reader import Progress, prime
from safeturn.metrics.bootstrap import Interval
from safeturn.metrics.rates import rate as wilson_rate
from safeturn.metrics.roc import auroc, rate, threshold_at_fpr

BOOTSTRAP_RESAMPLES = 1000


def evaluate_file(
    labelled: LabelledFile,
    model_path: Path = DEFAULT_MODEL_PATH,
    *,
    out: Path | None = None,
    nudity: bool = True,
    threshold: float | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    progress: Progress | None = None,
    moderator_factory: ModeratorFactory | None = None,
) -> dict[str, Any]:
    """Evaluate the moderator and the three baselines on a labelled file (see `labelled.py`).

    The turn at which harm surfaces is unknown for outside data, so a conversation is judged
    on its last user turn; `flagged_before_last_turn` says how often a harmful multi-turn one
    is caught earlier.

    Args:
        labelled: The file as `labelled.read_labelled` read it; its skipped lines are listed.
        model_path: The moderator model to evaluate.
        out: Where to write the JSON report (optional).
        nudity: Run NudeNet on the images, as the deployed moderator does.
        threshold: Flag at this risk instead of the model's threshold (keywords: one hit).
        resamples: Bootstrap resamples for the AUROC and TPR@5 %FPR intervals.
        progress: Called as caches are primed.
        moderator_factory: Builds the moderator from the model (tests inject stubs).

    Raises:
        UnscorableFileError: No line could be scored, or the scored lines hold one class.
        PrerequisiteError: The model is missing.
    """
    start = time.perf_counter()
    labelled.check_scorable()
    examples = labelled.conversations
    model = ModeratorModel.load(model_path)
    moderator = build_moderator(model, nudity=nudity, factory=moderator_factory)
    prime(moderator.reader, [e.sample.dialogue for e in examples], progress)
    runs = run_methods(moderator, examples, threshold)
    report = file_report(runs, examples, resamples=resamples)
    report["n"]["lines"] = labelled.lines
    report["n"]["skipped"] = len(labelled.skipped)
    report["skipped"] = [s.to_json() for s in labelled.skipped]
    report["data"] = str(labelled.path)
    report["model"] = str(model_path)
    report["seconds"] = round(time.perf_counter() - start, 1)
    if out is not None:
        write_report(report, out)
    return report


def file_report(
    runs: Sequence[MethodRun],
    examples: Sequence[LabelledConversation],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """The `--data FILE` report: every method overall, then per source (module docstring)."""
    overall = {run.name: describe(run, examples, resamples) for run in runs}
    cuts = {name: block["threshold_at_5fpr"] for name, block in overall.items()}
    by_source: dict[str, dict[str, Any]] = {}
    for source in sorted({e.source for e in examples}):
        index = [i for i, e in enumerate(examples) if e.source == source]
        subset = [examples[i] for i in index]
        classes = {e.harmful for e in subset}
        block: dict[str, Any] = {"n": _counts(subset)}
        for run in runs:
            part = subset_run(run, index)
            entry = describe(part, subset, resamples)
            if len(classes) == 1:
                (harmful,) = classes
                rest = [i for i, e in enumerate(examples) if e.harmful is not harmful]
                pooled = index + rest
                labels = np.array([examples[i].harmful for i in pooled], dtype=bool)
                scores = run.scores[pooled]
                low_high, _ = _ranking_intervals(labels, scores, resamples)
                entry["auroc_vs_rest"] = auroc(labels, scores)
                entry["auroc_vs_rest_ci"] = _pair(low_high)
                entry["auroc_vs_rest_note"] = (
                    f"this source's {len(index)} {'harmful' if harmful else 'benign'} "
                    f"conversations ranked against the file's {len(rest)} "
                    f"{'benign' if harmful else 'harmful'} ones from other sources"
                )
            flags = part.scores >= cuts[run.name]
            labels = np.array([e.harmful for e in subset], dtype=bool)
            entry["tpr_at_overall_5fpr"] = rate(flags[labels])
            entry["fpr_at_overall_5fpr"] = rate(flags[~labels])
            entry["overall_5fpr_threshold"] = cuts[run.name]
            block[run.name] = entry
        by_source[source] = block
    moderator = overall["moderator"]
    return {
        "moderator": moderator,
        "baselines": {name: overall[name] for name in METHODS[1:] if name in overall},
        "by_source": by_source,
        "n": _counts(examples),
        "threshold": moderator["threshold"],
        "keyword_threshold": overall["keyword"]["threshold"] if "keyword" in overall else None,
        "fpr_budget": FPR_BUDGET,
        "intervals": {
            "confidence": 0.95,
            "auroc": f"stratified percentile bootstrap, {resamples} resamples, seed 0",
            "tpr_at_5fpr": "the same bootstrap, threshold re-chosen in each resample",
            "rates": "Wilson score interval",
        },
    }


def describe(run: MethodRun, examples: Sequence[Example], resamples: int) -> dict[str, Any]:
    """One method's block of the file report: `summarize` plus intervals, flat keys.

    With a single class in `examples` the ranking metrics are None (no AUROC, no 5 % FPR
    operating point) and only the rate of the class present is given.
    """
    summary = summarize(run, examples)
    labels = np.array([e.harmful for e in examples], dtype=bool)
    two_classes = bool(labels.any() and (~labels).any())
    flagged = run.scores >= run.threshold
    auroc_ci, tpr_ci = _ranking_intervals(labels, run.scores, resamples)
    early, early_5 = summary["earliest"], summary["earliest_at_5fpr"]
    multi = early["multi_turn_harmful"]
    before = early["flagged_before_final_turn"]
    return {
        "threshold": run.threshold,
        "auroc": summary["auroc"],
        "auroc_ci": _pair(auroc_ci),
        "tpr": summary["tpr"],
        "tpr_ci": _wilson(flagged[labels]),
        "fpr": summary["fpr"],
        "fpr_ci": _wilson(flagged[~labels]),
        "tpr_at_5fpr": summary["tpr_at_5fpr"] if two_classes else None,
        "tpr_at_5fpr_ci": _pair(tpr_ci),
        "threshold_at_5fpr": summary["tpr_at_5fpr_threshold"] if two_classes else None,
        "multi_turn_harmful": multi,
        "flagged_before_last_turn": before,
        "flagged_before_last_turn_ci": (
            None if before is None else _wilson(np.arange(multi) < round(before * multi))
        ),
        "flagged_before_last_turn_at_5fpr": (
            early_5["flagged_before_final_turn"] if two_classes else None
        ),
        "earliest_turn": {
            "of": "harmful multi-turn conversations flagged at the threshold",
            "mean": early["earliest_turn_mean"],
            "distribution": early["earliest_turn_distribution"],
            "mean_turns_before_last": early["mean_turns_before_final"],
        },
        "category_accuracy": summary["category_accuracy"],
        "category_n": summary["category_n"],
    }


def _ranking_intervals(
    labels: npt.NDArray[np.bool_], scores: Array, resamples: int, seed: int = 0
) -> tuple[Interval | None, Interval | None]:
    """95 % stratified bootstrap intervals of (AUROC, TPR at 5 % FPR); None with one class.

    Harmful and benign scores are resampled separately, keeping both class sizes, so no
    resample lacks a class; the 5 % FPR threshold is re-chosen on each resample's benign ones.
    """
    positives, negatives = scores[labels], scores[~labels]
    if not positives.size or not negatives.size or resamples < 1:
        return None, None
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.ones(positives.size, bool), np.zeros(negatives.size, bool)])
    aurocs, tprs = np.empty(resamples), np.empty(resamples)
    for k in range(resamples):
        pos = positives[rng.integers(0, positives.size, positives.size)]
        neg = negatives[rng.integers(0, negatives.size, negatives.size)]
        aurocs[k] = auroc(y, np.concatenate([pos, neg])) or 0.0
        tprs[k] = float(np.mean(pos >= threshold_at_fpr(neg, FPR_BUDGET)))
    bounds = [0.025, 0.975]
    return Interval(*np.quantile(aurocs, bounds)), Interval(*np.quantile(tprs, bounds))


def _wilson(flags: npt.NDArray[np.bool_]) -> list[float] | None:
    if not flags.size:
        return None
    found = wilson_rate(int(flags.sum()), int(flags.size))
    return [found.low, found.high]


def _pair(bounds: Sequence[float] | None) -> list[float] | None:
    return None if bounds is None else [float(bounds[0]), float(bounds[1])]


def _counts(examples: Sequence[Example]) -> dict[str, int]:
    return {
        "conversations": len(examples),
        "harmful": sum(e.harmful for e in examples),
        "benign": sum(not e.harmful for e in examples),
        "multi_turn": sum(e.turns > 1 for e in examples),
        "multi_turn_harmful": sum(e.harmful and e.turns > 1 for e in examples),
    }
