"""Train the fine-tuned reply judge and measure it leave-one-source-out.

Data: every labelled reply of `reply_data` plus the `hard_cases` derived from them, and
stepwise answers / refusals written for HarmBench and AdvBench behaviours (family
`behaviours`) and for benign requests. Each source family is cut by `group` 70/15/15 into
train, validation and test.

Training: binary cross-entropy on labelled replies, each class given equal total weight and
each (source, kind) within a class a weight ∝ √size (a big source cannot drown a small one),
plus a pairwise logistic loss on hh-rlhf preference pairs (the less harmless reply should
score higher). The threshold is the lowest that calls at most 5 % of each source's own safe
validation replies unsafe (`benign-sources`, as the guard calibrates): a pooled κ maximum
(`max-kappa`, kept for comparison; every fold reports both) is set by the sources with the most
unsafe replies and called 21 % of XSTest's safe replies unsafe when XSTest was left out.

Leave-one-source-out: for each family, train without it (and without anything derived from
it, and without the HarmBench/AdvBench cases whose request it also asks) and score all of it.
Two-class families report κ and AUC; one-class families (all safe) their false-unsafe rate
and, like the guard's folds, AUC and κ against the unsafe test replies of the other sources;
hh-rlhf its pairwise agreement.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from safeturn.judges.cross_encoder import (
    DEFAULT_WEIGHTS,
    JudgeInput,
    ReplyJudgeModel,
    base_encoder,
    encode,
    extras,
    frozen_states,
    new_top,
    pad,
    unsafe_log_probability,
)
from safeturn.judges.hard_cases import generate
from safeturn.judges.reply_data import SOURCE_NOTES, ReplyExample, load_reply_examples
from safeturn.judges.validation import binary_metrics
from safeturn.metrics.roc import auroc

SPLITS = ("train", "validation", "test")
FAMILIES = ("jailbreakbench", "xstest", "hh-rlhf", "mtbench101", "vlguard", "siuo")
ONE_CLASS = frozenset({"mtbench101", "vlguard", "siuo"})
OVERLAP_CHECKED = frozenset({"behaviours"})
"""Families of bare requests: in a fold, any whose request is also one of the held-out
family's requests (JailbreakBench reuses HarmBench and AdvBench behaviours) is dropped."""

VLGUARD_BENIGN_REQUESTS = 300
_REFUSING = re.compile(r"\b(?:cannot|can't|not able|unable|I will not|won't)\b|\brisk\b", re.I)

Floats = npt.NDArray[np.float64]
Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained judge (recorded in its metadata)."""

    tuned_layers: int = 1
    head_hidden: int = 64
    epochs: int = 2
    batch_size: int = 32
    lr_layers: float = 4e-5
    lr_head: float = 1e-3
    pair_weight: float = 0.5
    factor_weight: float = 0.5
    seed: int = 0
    caps: dict[str, int] = field(
        default_factory=lambda: {"hh-rlhf": 1600, "vlguard": 800, "mtbench101": 600}
    )
    hard_per_example: float = 0.5
    threshold_rule: str = "benign-sources"
    """`max-kappa` (Cohen's κ on the pooled validation split) or `benign-sources` (the lowest
    threshold that keeps every source's own safe validation replies under `false_unsafe`)."""
    false_unsafe: float = 0.05


@dataclass
class Encoded:
    """Examples with their token ids and cached frozen-layer states."""

    examples: list[ReplyExample]
    inputs: list[JudgeInput]
    states: list[Any]
    split: list[str]

    def select(self, keep: Sequence[bool]) -> Encoded:
        """The rows where `keep` is true."""
        idx = [i for i, k in enumerate(keep) if k]
        return Encoded(
            [self.examples[i] for i in idx],
            [self.inputs[i] for i in idx],
            [self.states[i] for i in idx],
            [self.split[i] for i in idx],
        )


def split_of(group: str, seed: int) -> str:
    """Train / validation / test for a group, 70/15/15, stable under adding other groups."""
    unit = int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if unit < 0.7 else "validation" if unit < 0.85 else "test"


def behaviour_requests(root: Path) -> list[tuple[str, str, str, bool]]:
    """(source, group, request, harmful) for stepwise answers and refusals with no reply.

    Harmful: HarmBench and AdvBench behaviours (family `behaviours`). Benign: XSTest's safe
    prompts (family `xstest`), single-turn VLGuard instructions that were answered (family
    `vlguard`) and FigStep-Benign's instructions (family `figstep`, not a fold), so that a
    stepwise answer is not itself a sign of the unsafe class.
    """
    out: list[tuple[str, str, str, bool]] = []
    files = (
        ("harmbench/harmbench_behaviors_text_all.csv", "Behavior", "behaviours"),
        ("harmbench/advbench_behaviors.csv", "Behavior", "behaviours"),
    )
    for name, column, family in files:
        path = root / name
        if path.is_file():
            with path.open(encoding="utf-8", newline="") as fh:
                for i, row in enumerate(csv.DictReader(fh)):
                    if text := (row.get(column) or "").strip():
                        out.append((family, f"{family}:{name}:{i}", text, True))
    xstest = root / "xstest" / "xstest_prompts.csv"
    if xstest.is_file():
        with xstest.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["label"] == "safe":
                    out.append(("xstest", f"xstest:{row['id']}", row["prompt"], False))
    vlguard = [
        ex
        for ex in load_reply_examples(root, sources=("vlguard",))
        if len(ex.users) == 1 and not _REFUSING.search(ex.reply)
    ]
    for ex in vlguard[:VLGUARD_BENIGN_REQUESTS]:
        out.append(("vlguard", ex.group, ex.users[0], False))
    benign = root / "figstep-benign" / "SafeBench-Tiny-Benign.csv"
    if benign.is_file():
        with benign.open(encoding="utf-8", newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                if text := (row.get("benign_instruction") or "").strip():
                    out.append(("figstep", f"figstep:{i}", text, False))
    return out


def build_examples(root: Path, config: TrainConfig) -> list[ReplyExample]:
    """Real labelled replies plus hard cases, every one with its family and group."""
    real = load_reply_examples(root, caps=config.caps)
    hard = generate(
        real, behaviour_requests(root), seed=config.seed, per_example=config.hard_per_example
    )
    return real + hard


def encode_all(examples: Sequence[ReplyExample], config: TrainConfig, log: Log) -> Encoded:
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


def _weights(examples: Sequence[ReplyExample]) -> Floats:
    """Equal total weight per class; within a class, (source, kind) strata weigh ∝ √size."""
    strata = Counter((ex.unsafe, ex.source, ex.kind) for ex in examples)
    raw = np.array([1.0 / math.sqrt(strata[(ex.unsafe, ex.source, ex.kind)]) for ex in examples])
    labels = np.array([bool(ex.unsafe) for ex in examples])
    for cls in (True, False):
        if (labels == cls).any():
            raw[labels == cls] *= 0.5 * len(examples) / raw[labels == cls].sum()
    return raw


def _batch(data: Encoded, rows: Sequence[int]) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(data.inputs[i].ids) for i in rows)
    dim = data.states[rows[0]].shape[-1]
    hidden = torch.zeros((len(rows), width, dim), dtype=torch.float32)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        n = len(data.inputs[i].ids)
        hidden[r, :n] = data.states[i].float()
        mask[r, :n] = 1
    return hidden, mask, extras([data.inputs[i] for i in rows])


def _buckets(rows: Sequence[int], data: Encoded, size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar length (little padding), in random order."""
    shuffled = list(rows)
    rng.shuffle(shuffled)
    chunks = [shuffled[i : i + size * 20] for i in range(0, len(shuffled), size * 20)]
    batches = []
    for chunk in chunks:
        chunk.sort(key=lambda i: len(data.inputs[i].ids))
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return batches


def predict(top: Any, data: Encoded, batch_size: int = 64) -> Floats:
    """P(unsafe) of every row of `data` under `top`."""
    import torch

    out = np.zeros(len(data.examples), dtype=np.float64)
    order = sorted(range(len(out)), key=lambda i: len(data.inputs[i].ids))
    top.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            hidden, mask, extra = _batch(data, rows)
            out[rows] = torch.exp(unsafe_log_probability(top(hidden, mask, extra))).double().numpy()
    return out


def kappa(truth: npt.NDArray[np.bool_], predicted: npt.NDArray[np.bool_]) -> float | None:
    """Cohen's κ of decisions against gold labels, as `judge validate` computes it."""
    value: float | None = binary_metrics(truth, predicted, resamples=0)["kappa"]
    return value


def best_threshold(truth: npt.NDArray[np.bool_], scores: Floats) -> float:
    """The threshold with the highest κ on (truth, scores); 0.5 when κ is undefined."""
    candidates = np.unique(np.round(scores, 4))
    best, best_k = 0.5, -2.0
    for t in candidates:
        k = kappa(truth, scores >= t)
        if k is not None and k > best_k:
            best, best_k = float(t), k
    return best


THRESHOLD_RULES = ("max-kappa", "benign-sources")
THRESHOLD_RULE_NOTES = {
    "max-kappa": "max Cohen's κ on the validation split",
    "benign-sources": "the lowest threshold that calls at most 5 % of each source's own safe "
    "validation replies unsafe",
}
MIN_SAFE_REPLIES = 20
"""A source needs this many safe real validation replies to set a `benign-sources` bound."""


def benign_source_threshold(
    examples: Sequence[ReplyExample], scores: Floats, *, false_unsafe: float
) -> float:
    """The lowest threshold keeping every source's safe replies under `false_unsafe` flagged.

    Each source's real safe validation replies give a bound; the threshold is the largest.
    Why: a pooled κ is dominated by the sources with the most unsafe replies, so its threshold
    can call a fifth of a new source's safe replies unsafe (as on XSTest); the guard
    calibrates the same way, per benign source.
    """
    bounds = [0.0]
    for source in sorted({ex.source for ex in examples}):
        safe = np.array(
            [
                float(s)
                for ex, s in zip(examples, scores, strict=True)
                if ex.source == source and ex.kind == "real" and ex.unsafe is False
            ]
        )
        if len(safe) < MIN_SAFE_REPLIES:
            continue
        allowed = math.floor(false_unsafe * len(safe))
        ranked = np.sort(safe)[::-1]
        # flag scores >= t: at most `allowed` of them may reach t
        bounds.append(
            float(np.nextafter(ranked[allowed], np.inf)) if allowed < len(ranked) else 0.0
        )
    return max(bounds)


def thresholds(
    examples: Sequence[ReplyExample],
    truth: npt.NDArray[np.bool_],
    scores: Floats,
    config: TrainConfig,
) -> dict[str, float]:
    """Every rule's threshold on the validation replies (the chosen one is `config`'s)."""
    return {
        "max-kappa": best_threshold(truth, scores),
        "benign-sources": benign_source_threshold(
            examples, scores, false_unsafe=config.false_unsafe
        ),
    }


def _factor_loss(
    logits: Any, examples: Sequence[ReplyExample], weights: Floats, config: TrainConfig
) -> Any:
    """Weighted cross-entropy of P(unsafe) = P(harmful request)·P(complied).

    Plus each factor's own cross-entropy where the source labels it (`factor_weight`).
    """
    import torch

    functional = torch.nn.functional
    log_p = unsafe_log_probability(logits)
    log_not_p = torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-6))
    target = torch.tensor([float(bool(ex.unsafe)) for ex in examples])
    weight = torch.tensor(weights, dtype=torch.float32)
    loss = (-(target * log_p + (1 - target) * log_not_p) * weight).mean()
    for column, name in ((0, "harmful_request"), (1, "complied")):
        known = [i for i, ex in enumerate(examples) if getattr(ex, name) is not None]
        if known:
            truth = torch.tensor([float(getattr(examples[i], name)) for i in known])
            factor = functional.binary_cross_entropy_with_logits(logits[known, column], truth)
            loss = loss + config.factor_weight * factor * len(known) / len(examples)
    return loss


def train_top(
    train: Encoded, val: Encoded, config: TrainConfig, log: Log
) -> tuple[Any, dict[str, float]]:
    """Fit a top on `train`, keep the epoch with the best validation loss, rate thresholds.

    Returns the top and each threshold rule's threshold on the validation split.
    """
    import torch

    rng = random.Random(config.seed)
    top = new_top(config.tuned_layers, config.head_hidden, config.seed)
    labelled = [i for i, ex in enumerate(train.examples) if ex.unsafe is not None]
    weights = np.zeros(len(train.examples))
    weights[labelled] = _weights([train.examples[i] for i in labelled])
    pairs: dict[str, list[int]] = {}
    for i, ex in enumerate(train.examples):
        if ex.pair is not None:
            pairs.setdefault(ex.pair, []).append(i)
    pair_rows = [
        sorted(v, key=lambda i: train.examples[i].rank) for v in pairs.values() if len(v) == 2
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": top.layers.parameters(), "lr": config.lr_layers},
            {"params": top.head.parameters(), "lr": config.lr_head},
        ],
        weight_decay=0.01,
    )
    steps_per_epoch = math.ceil(len(labelled) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * max(0.0, 1 - step / total)
    )
    val_rows = [i for i, ex in enumerate(val.examples) if ex.unsafe is not None]
    val_truth = np.array([bool(val.examples[i].unsafe) for i in val_rows])
    val_weights = _weights([val.examples[i] for i in val_rows])
    best: tuple[float, dict[str, Any]] | None = None
    for epoch in range(config.epochs):
        top.train()
        started = time.monotonic()
        batches = _buckets(labelled, train, config.batch_size, rng)
        pair_batches = [
            pair_rows[i : i + config.batch_size // 4]
            for i in range(0, len(pair_rows), config.batch_size // 4)
        ]
        rng.shuffle(pair_batches)
        for step, rows in enumerate(batches):
            hidden, mask, extra = _batch(train, rows)
            logits = top(hidden, mask, extra)
            loss = _factor_loss(logits, [train.examples[i] for i in rows], weights[rows], config)
            if pair_batches and config.pair_weight > 0:
                chosen = pair_batches[step % len(pair_batches)]
                flat = [i for pair in chosen for i in pair]
                p_hidden, p_mask, p_extra = _batch(train, flat)
                p_log = unsafe_log_probability(top(p_hidden, p_mask, p_extra)).view(-1, 2)
                margin = p_log[:, 1] - p_log[:, 0]
                loss = loss + config.pair_weight * torch.nn.functional.softplus(-margin).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(top.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            if step % 100 == 0:
                log(f"epoch {epoch + 1} step {step}/{len(batches)} loss {loss.item():.4f}")
        scores = predict(top, val.select([ex.unsafe is not None for ex in val.examples]))
        p = np.clip(scores, 1e-6, 1 - 1e-6)
        val_loss = float(
            np.average(-np.where(val_truth, np.log(p), np.log(1 - p)), weights=val_weights)
        )
        auc = auroc(val_truth, scores)
        log(
            f"epoch {epoch + 1}: validation loss {val_loss:.4f}, AUC {auc}, "
            f"{time.monotonic() - started:.0f} s"
        )
        if best is None or val_loss < best[0]:
            best = (val_loss, {k: v.detach().clone() for k, v in top.state_dict().items()})
    assert best is not None
    top.load_state_dict(best[1])
    top.eval()
    scored = val.select([ex.unsafe is not None for ex in val.examples])
    return top, thresholds(scored.examples, val_truth, predict(top, scored), config)


def metrics(truth: npt.NDArray[np.bool_], scores: Floats, threshold: float) -> dict[str, Any]:
    """`decision_metrics` of the decisions `scores >= threshold`."""
    return decision_metrics(truth, scores >= threshold, scores)


def decision_metrics(
    truth: npt.NDArray[np.bool_], predicted: npt.NDArray[np.bool_], scores: Floats | None
) -> dict[str, Any]:
    """`judge validate`'s point metrics (no intervals) plus the false-unsafe rate."""
    out = binary_metrics(truth, predicted, scores, resamples=0)
    out.pop("ci", None)
    out["false_unsafe_rate"] = float(predicted[~truth].mean()) if (~truth).any() else None
    return out


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
    data: Encoded, config: TrainConfig, families: Sequence[str], log: Log
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
    data: Encoded, config: TrainConfig, log: Log
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
    config: TrainConfig | None = None,
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

    config = config or TrainConfig()
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
