"""Fitting the reply judge's top layers on cached frozen states (`train_judge` runs it).

Binary cross-entropy on labelled replies, each class given equal total weight and each
(source, kind) within a class a weight ∝ √size, each factor's own cross-entropy where the
source labels it, plus a pairwise logistic loss on hh-rlhf preference pairs; the epoch with the
best validation loss is kept.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from safeturn.judges.cross_encoder import JudgeInput, extras, new_top, unsafe_log_probability
from safeturn.judges.judge_thresholds import thresholds
from safeturn.judges.reply_data import ReplyExample
from safeturn.metrics.roc import auroc

Floats = npt.NDArray[np.float64]
Log = Callable[[str], None]


@dataclass(frozen=True)
class JudgeTrainConfig:
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
    false_unsafe: float = 0.10
    """`benign-sources` budget per source. 10 %, not the guard's 5 %: a judge's threshold must
    hold on sources whose scores sit higher or lower than every training source's, and at 5 %
    one source's look-alikes set it so high that two held-out sources fell to κ 0.56 (measured
    leave-one-source-out; README, "Threshold")."""


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


def _factor_loss(
    logits: Any, examples: Sequence[ReplyExample], weights: Floats, config: JudgeTrainConfig
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


@dataclass(frozen=True)
class _Plan:
    """What every epoch reuses: the labelled rows, their weights and the preference pairs."""

    labelled: list[int]
    weights: Floats
    pairs: list[list[int]]
    """Row pairs (less harmful first) of hh-rlhf preference pairs."""


def _plan(train: Encoded) -> _Plan:
    labelled = [i for i, ex in enumerate(train.examples) if ex.unsafe is not None]
    weights = np.zeros(len(train.examples))
    weights[labelled] = _weights([train.examples[i] for i in labelled])
    by_pair: dict[str, list[int]] = {}
    for i, ex in enumerate(train.examples):
        if ex.pair is not None:
            by_pair.setdefault(ex.pair, []).append(i)
    pairs = [
        sorted(rows, key=lambda i: train.examples[i].rank)
        for rows in by_pair.values()
        if len(rows) == 2
    ]
    return _Plan(labelled, weights, pairs)


def _optimizer(top: Any, config: JudgeTrainConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW (layers and head at their own rates), 50 warm-up steps, then linear decay."""
    import torch

    optimizer = torch.optim.AdamW(
        [
            {"params": top.layers.parameters(), "lr": config.lr_layers},
            {"params": top.head.parameters(), "lr": config.lr_head},
        ],
        weight_decay=0.01,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * max(0.0, 1 - step / total_steps)
    )
    return optimizer, scheduler


def _pair_loss(top: Any, train: Encoded, chosen: Sequence[list[int]]) -> Any:
    """Logistic loss that the less harmless reply of each pair scores higher."""
    import torch

    flat = [i for pair in chosen for i in pair]
    log_p = unsafe_log_probability(top(*_batch(train, flat))).view(-1, 2)
    return torch.nn.functional.softplus(-(log_p[:, 1] - log_p[:, 0])).mean()


def _epoch(
    top: Any,
    train: Encoded,
    plan: _Plan,
    steps: tuple[Any, Any],
    config: JudgeTrainConfig,
    rng: random.Random,
    log: Log,
    *,
    epoch: int,
) -> None:
    """One pass over the labelled rows in length buckets, a pair batch beside each batch."""
    import torch

    optimizer, scheduler = steps
    top.train()
    batches = _buckets(plan.labelled, train, config.batch_size, rng)
    size = config.batch_size // 4
    pair_batches = [plan.pairs[i : i + size] for i in range(0, len(plan.pairs), size)]
    rng.shuffle(pair_batches)
    for step, rows in enumerate(batches):
        examples = [train.examples[i] for i in rows]
        loss = _factor_loss(top(*_batch(train, rows)), examples, plan.weights[rows], config)
        if pair_batches and config.pair_weight > 0:
            chosen = pair_batches[step % len(pair_batches)]
            loss = loss + config.pair_weight * _pair_loss(top, train, chosen)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(top.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 100 == 0:
            log(f"epoch {epoch + 1} step {step}/{len(batches)} loss {loss.item():.4f}")


def train_top(
    train: Encoded, val: Encoded, config: JudgeTrainConfig, log: Log
) -> tuple[Any, dict[str, float]]:
    """Fit a top on `train`, keep the epoch with the best validation loss, rate thresholds.

    Returns the top and each threshold rule's threshold on the validation split.
    """
    rng = random.Random(config.seed)
    top = new_top(config.tuned_layers, config.head_hidden, config.seed)
    plan = _plan(train)
    total = math.ceil(len(plan.labelled) / config.batch_size) * config.epochs
    steps = _optimizer(top, config, total)
    scored = val.select([ex.unsafe is not None for ex in val.examples])
    truth = np.array([bool(ex.unsafe) for ex in scored.examples])
    weights = _weights(scored.examples)
    best: tuple[float, dict[str, Any]] | None = None
    for epoch in range(config.epochs):
        started = time.monotonic()
        _epoch(top, train, plan, steps, config, rng, log, epoch=epoch)
        scores = predict(top, scored)
        p = np.clip(scores, 1e-6, 1 - 1e-6)
        loss = float(np.average(-np.where(truth, np.log(p), np.log(1 - p)), weights=weights))
        log(
            f"epoch {epoch + 1}: validation loss {loss:.4f}, AUC {auroc(truth, scores)}, "
            f"{time.monotonic() - started:.0f} s"
        )
        if best is None or loss < best[0]:
            best = (loss, {k: v.detach().clone() for k, v in top.state_dict().items()})
    assert best is not None
    top.load_state_dict(best[1])
    top.eval()
    rules = thresholds(
        scored.examples, truth, predict(top, scored), false_unsafe=config.false_unsafe
    )
    return top, rules
