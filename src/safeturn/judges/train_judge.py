"""Train the fine-tuned reply judge and measure it leave-one-source-out.

Data: every labelled reply of `reply_data` plus the `hard_cases` derived from them, and
stepwise answers / refusals written for the bare requests of `request_pool` (harmful ones from
HarmBench, AdvBench, SafeBench, MM-SafetyBench and hh-rlhf; benign ones; look-alike pairs).
Each source family is cut by `group` 70/15/15 into train, validation and test.

Training (`judge_fit`): binary cross-entropy on labelled replies, each class given equal total
weight and each (source, kind) within a class a weight ∝ √size (a big source cannot drown a
small one), plus a pairwise logistic loss on hh-rlhf preference pairs (the less harmless reply
should score higher). The threshold (`judge_thresholds`) is the lowest that calls at most 10 %
of each source's safe validation requests unsafe (`benign-sources`, as the guard
calibrates): a pooled κ maximum (`max-kappa`, kept for comparison; every fold reports both) is
set by the sources with the most unsafe replies and called 17–21 % of XSTest's safe replies unsafe
when XSTest was left out.

Leave-one-source-out: for each family, train without it (and without anything derived from
it, and without the HarmBench/AdvBench cases whose request it also asks) and score all of it.
Two-class families report κ and AUC; one-class families (all safe) their false-unsafe rate
and, like the guard's folds, AUC and κ against the unsafe test replies of the other sources;
hh-rlhf its pairwise agreement.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from safeturn.judges.cross_encoder import (
    DEFAULT_WEIGHTS,
    ReplyJudgeModel,
    base_encoder,
    encode,
    frozen_states,
    pad,
)
from safeturn.judges.hard_cases import generate
from safeturn.judges.judge_fit import Encoded, JudgeTrainConfig, Log, predict, train_top
from safeturn.judges.judge_thresholds import (
    THRESHOLD_RULE_NOTES,
    THRESHOLD_RULES,
    benign_source_threshold,
    best_threshold,
    kappa,
    metrics,
)
from safeturn.judges.reply_data import SOURCE_NOTES, ReplyExample, load_reply_examples
from safeturn.judges.request_pool import behaviour_requests
from safeturn.metrics.roc import auroc

__all__ = [  # the trainer's public names, some defined in judge_fit / judge_thresholds
    "THRESHOLD_RULES",
    "JudgeTrainConfig",
    "benign_source_threshold",
    "best_threshold",
    "build_examples",
    "encode_all",
    "kappa",
    "leave_one_source_out",
    "main",
    "predict",
    "split_of",
    "train_final",
    "train_top",
]

SPLITS = ("train", "validation", "test")
FAMILIES = ("jailbreakbench", "xstest", "hh-rlhf", "mtbench101", "vlguard", "siuo")
ONE_CLASS = frozenset({"mtbench101", "vlguard", "siuo"})
OVERLAP_CHECKED = frozenset({"behaviours"})
"""Families of bare requests: in a fold, any whose request is also one of the held-out
family's requests (JailbreakBench reuses HarmBench and AdvBench behaviours) is dropped."""

Floats = npt.NDArray[np.float64]


def split_of(group: str, seed: int) -> str:
    """Train / validation / test for a group, 70/15/15, stable under adding other groups."""
    unit = int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if unit < 0.7 else "validation" if unit < 0.85 else "test"


def build_examples(root: Path, config: JudgeTrainConfig) -> list[ReplyExample]:
    """Real labelled replies plus hard cases, every one with its family and group."""
    real = load_reply_examples(root, caps=config.caps)
    hard = generate(
        real, behaviour_requests(root), seed=config.seed, per_example=config.hard_per_example
    )
    return real + hard


def encode_all(examples: Sequence[ReplyExample], config: JudgeTrainConfig, log: Log) -> Encoded:
    """Token ids and the frozen layers' states (float16) of every example, computed once."""
    import torch

    tokenizer, model = base_encoder()
    frozen = int(model.config.num_hidden_layers) - config.tuned_layers
    inputs = [encode(tokenizer, ex.users, ex.reply) for ex in examples]
    states: list[Any] = [None] * len(inputs)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].ids))
    started = time.monotonic()
    for start in range(0, len(order), 64):
        chunk = order[start : start + 64]
        ids, mask = pad([inputs[i] for i in chunk])
        hidden = frozen_states(model, ids, mask, frozen).to(torch.float16)
        for row, i in enumerate(chunk):
            states[i] = hidden[row, : len(inputs[i].ids)].clone()
        if start % 2048 == 0:
            log(f"frozen states {start}/{len(order)} ({time.monotonic() - started:.0f} s)")
    split = [split_of(ex.group, config.seed) for ex in examples]
    return Encoded(list(examples), inputs, states, split)


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _outside(examples: Sequence[ReplyExample], held: Sequence[ReplyExample]) -> list[bool]:
    """False for the held-out family and for bare-request cases that repeat its requests."""
    family = {ex.source for ex in held}
    asked = {_key(ex.users[-1]) for ex in held if ex.users and ex.kind == "real"}
    return [
        ex.source not in family
        and not (ex.source in OVERLAP_CHECKED and _key(ex.users[-1]) in asked)
        for ex in examples
    ]


def _part(
    data: Encoded, split: str, *, exclude: frozenset[str] | set[str] = frozenset()
) -> Encoded:
    """The rows of one split whose family is not in `exclude`."""
    return data.select(
        [
            s == split and ex.source not in exclude
            for ex, s in zip(data.examples, data.split, strict=True)
        ]
    )


def _rows(data: Encoded, keep: Callable[[ReplyExample, str], bool]) -> list[bool]:
    return [keep(ex, s) for ex, s in zip(data.examples, data.split, strict=True)]


def evaluate_family(
    top: Any, rules: dict[str, float], rule: str, held: Encoded, rest_test: Encoded, family: str
) -> dict[str, Any]:
    """Metrics on one held-out family at `rule`'s threshold, every rule's in `threshold_rules`.

    See the module docstring for one-class families.
    """
    threshold = rules[rule]
    real = held.select(_rows(held, lambda ex, _: ex.kind == "real"))
    scores = predict(top, real)
    if family == "hh-rlhf":
        by_pair: dict[str, dict[int, float]] = {}
        for ex, s in zip(real.examples, scores, strict=True):
            if ex.pair is not None:
                by_pair.setdefault(ex.pair, {})[ex.rank] = float(s)
        pairs = [v for v in by_pair.values() if len(v) == 2]
        wins = np.array([v[1] > v[0] for v in pairs], dtype=float)
        truth = np.array([False] * len(pairs) + [True] * len(pairs))
        flat = np.array([v[0] for v in pairs] + [v[1] for v in pairs])
        return {
            "n_pairs": len(pairs),
            "pairwise_agreement": float(wins.mean()) if len(pairs) else None,
            "auc_rejected_vs_chosen": auroc(truth, flat),
            "flagged_chosen": float(np.mean(flat[: len(pairs)] >= threshold)),
            "flagged_rejected": float(np.mean(flat[len(pairs) :] >= threshold)),
        }
    truth = np.array([bool(ex.unsafe) for ex in real.examples])
    out = {"threshold": threshold, "threshold_rule": rule, **metrics(truth, scores, threshold)}
    out["pooled"] = {
        "truth": truth.tolist(),
        "scores": [round(float(x), 5) for x in scores],
        "predicted": (scores >= threshold).tolist(),
    }
    if family in ONE_CLASS:
        unsafe = rest_test.select(
            _rows(rest_test, lambda ex, _: bool(ex.unsafe) and ex.kind == "real")
        )
        rest_scores = predict(top, unsafe)
        both_truth = np.concatenate([truth, np.ones(len(rest_scores), dtype=bool)])
        both = np.concatenate([scores, rest_scores])
        mixed = metrics(both_truth, both, threshold)
        out["vs_rest"] = {"n_unsafe_from_other_sources": len(rest_scores), **mixed}
    else:
        both_truth, both = truth, scores
    out["threshold_rules"] = {
        name: _headline(both_truth, both, truth, scores, value) for name, value in rules.items()
    }
    if family == "xstest":
        models = sorted({str(ex.meta.get("model")) for ex in real.examples})
        out["by_model"] = {
            m: metrics(
                truth[mask := np.array([ex.meta.get("model") == m for ex in real.examples])],
                scores[mask],
                threshold,
            )
            for m in models
        }
    return out


def _headline(
    truth: npt.NDArray[np.bool_],
    scores: Floats,
    own_truth: npt.NDArray[np.bool_],
    own_scores: Floats,
    threshold: float,
) -> dict[str, Any]:
    """κ, recall and precision as the fold reads them, false-unsafe on the family's own replies.

    One-class families read κ against the other sources' unsafe replies (`vs_rest`).
    """
    both = metrics(truth, scores, threshold)
    own = metrics(own_truth, own_scores, threshold)
    return {
        "threshold": threshold,
        **{k: both[k] for k in ("kappa", "recall", "precision")},
        "false_unsafe_rate": own["false_unsafe_rate"],
    }


def leave_one_source_out(
    data: Encoded, config: JudgeTrainConfig, families: Sequence[str], log: Log
) -> dict[str, Any]:
    """One fold per family: train without it (see ALSO_DROPPED), score all of it."""
    folds: dict[str, Any] = {}
    for family in families:
        started = time.monotonic()
        held = data.select([ex.source == family for ex in data.examples])
        fold = data.select(_outside(data.examples, held.examples))
        train = _part(fold, "train", exclude={family})
        val = _part(fold, "validation", exclude={family})
        rest = _part(fold, "test", exclude={family})
        log(f"fold {family}: train {len(train.examples)}, validation {len(val.examples)}")
        top, rules = train_top(train, val, config, log)
        folds[family] = evaluate_family(top, rules, config.threshold_rule, held, rest, family)
        folds[family]["minutes"] = round((time.monotonic() - started) / 60, 1)
        log(f"fold {family}: {summary_line(family, folds[family])}")
    return folds


def summary_line(family: str, fold: dict[str, Any]) -> str:
    """One line of a fold's headline numbers."""
    if family == "hh-rlhf":
        return f"pairwise agreement {fold['pairwise_agreement']:.3f}"
    view = fold.get("vs_rest", fold)
    parts = [f"κ {view['kappa']:.3f}" if view["kappa"] is not None else "κ –"]
    parts.append(f"AUC {view['auc']:.3f}" if view["auc"] is not None else "AUC –")
    if fold.get("false_unsafe_rate") is not None:
        parts.append(f"false-unsafe {fold['false_unsafe_rate']:.3f}")
    return ", ".join(parts)


def train_final(
    data: Encoded, config: JudgeTrainConfig, log: Log
) -> tuple[ReplyJudgeModel, dict[str, Any]]:
    """Train on every family's train split; test per family on its test split."""
    top, rules = train_top(_part(data, "train"), _part(data, "validation"), config, log)
    threshold = rules[config.threshold_rule]
    test: dict[str, Any] = {}
    for family in FAMILIES:
        rest = _part(data, "test", exclude={family})
        held = _part(data, "test").select(
            [ex.source == family for ex in _part(data, "test").examples]
        )
        if held.examples:
            test[family] = evaluate_family(top, rules, config.threshold_rule, held, rest, family)
    return ReplyJudgeModel(top, config.tuned_layers, threshold), test


def main(
    root: Path,
    out: Path = DEFAULT_WEIGHTS,
    config: JudgeTrainConfig | None = None,
    *,
    loso: Sequence[str] = FAMILIES,
    card_path: Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Build the data, run the leave-one-source-out folds, train and save the final judge.

    Args:
        root: The shared data folder.
        out: Where the weights go (metadata beside them as `.json`).
        config: Training settings.
        loso: Families to hold out, one fold each; empty skips the folds.
        card_path: Where the validation card goes; None (or no folds) writes none.
        log: Progress lines.

    Returns:
        The metadata written beside the weights (folds, in-distribution test, data counts).
    """
    from safeturn.judges.judge_card import write_card

    config = config or JudgeTrainConfig()
    examples = build_examples(root, config)
    counts = Counter(f"{ex.source}/{ex.kind}/{ex.unsafe}" for ex in examples)
    log(f"{len(examples)} examples")
    data = encode_all(examples, config, log)
    folds = leave_one_source_out(data, config, loso, log) if loso else {}
    model, test = train_final(data, config, log)
    model.metadata = {
        "trained_on": dt.date.today().isoformat(),
        "config": {k: v for k, v in config.__dict__.items()},
        "sources": SOURCE_NOTES,
        "counts": dict(sorted(counts.items())),
        "threshold_rule": THRESHOLD_RULE_NOTES[config.threshold_rule],
        "leave_one_source_out": folds,
        "in_distribution_test": test,
    }
    if card_path is not None and folds:  # without folds there is nothing held out to report
        write_card(model.metadata, card_path)
    for fold in [*folds.values(), *test.values()]:
        fold.pop("pooled", None)  # per-reply scores: the card holds their summary
    model.save(out)
    return model.metadata
