"""Train the moderator's fast stage: `safeturn guard train --data-root ../shared/data`.

Steps: draw and build the dialogues (`dataset.py`), prime the caches (OCR of every distinct
image once, embeddings of every distinct text once), read every dialogue into per-prefix
feature rows through the same `ConversationState` the moderator uses, fit the network (torch,
AdamW, early stopping on the validation loss), round it to float16 as it will be stored,
calibrate the running-max harm logit by Platt scaling on validation, pick the threshold that
flags at most 5 % of the benign validation dialogues of *each* benign source (a pooled rate
hides a source the guard over-flags), evaluate on the test seeds, and save the model with its
metadata (data counts, plan, seeds, timings, metrics, the per-source validation rates).
`leave_out` drops whole sources from every split: `loso.py` uses it to measure how the model
does on a source it never saw.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from safeturn.errors import PrerequisiteError
from safeturn.guard.base import STRATEGY_NAMES
from safeturn.guard.cache import CachedEncoder
from safeturn.guard.dataset import (
    DEFAULT_CAPS,
    SPLITS,
    GuardExample,
    SeedPlan,
    counts,
    load_examples,
)
from safeturn.guard.evaluate import evaluate_examples
from safeturn.guard.features import SCALAR_NAMES, ConversationState, FloatArray, feature_dim
from safeturn.guard.images import ImageAnalyzer, no_nudity
from safeturn.guard.model import CHANNELS, DEFAULT_MODEL_PATH, EMPTY_LOGIT, POOLS, ModeratorModel
from safeturn.guard.moderator import DialogueModerator
from safeturn.guard.reader import DialogueReader, Progress, prime, stack_rows
from safeturn.judges.embedder import EMBEDDER_PIN, EMBEDDING_DIM, embed
from safeturn.metrics.roc import auroc, rate, threshold_at_fpr
from safeturn.taxonomy import Category

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CATEGORIES = tuple(c.value for c in Category)
LABEL_RULE = (
    "a prefix of a built harmful dialogue is harmful from the first turn whose text, image or "
    "preceding assistant text carries the seed's question, instruction or subject; benign "
    "before that (the same template text as in benign twins); a harmful dialogue written by "
    "people (hh-rlhf) labels only its whole, the earlier prefixes are unlabelled; benign "
    "dialogues never"
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (recorded in the model's metadata)."""

    data_root: Path
    out: Path = DEFAULT_MODEL_PATH
    seed: int = 0
    caps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CAPS))
    image_fraction: float = 0.2
    strategies_per_image_seed: int = 3
    hidden: int = 64
    """Size of the per-turn hidden vector that is pooled over turns."""
    hidden2: int = 32
    dropout: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 1e-3
    max_epochs: int = 40
    patience: int = 5
    batch_size: int = 64
    """Dialogues per batch."""
    category_weight: float = 0.5
    strategy_weight: float = 0.5
    target_fpr: float = 0.05
    """The shipped threshold flags at most this share of benign validation dialogues."""
    band_fprs: tuple[float, float] = (0.20, 0.01)
    """The LLM band: from the threshold at 20 % benign FPR up to the one at 1 %."""
    pools: tuple[str, ...] = ("last", "max")
    """What the second layer reads of the turns so far (see `model.py`)."""
    scorer_hidden: int = 64
    """Hidden units of the harm scorer g shared by the embedding channels."""
    scorer_dropout: float = 0.3
    scorer_weight_decay: float = 1e-2
    natural_harmful_weight: float = 1.0
    """Loss weight of a harmful dialogue written by people (hh-rlhf). Their label is noisy:
    some red-teamers only ask mild questions, and at full weight the scorer learns that any
    casual "how can I ..." is harmful."""
    leave_out: tuple[str, ...] = ()
    """Sources left out of every split (leave-one-source-out runs)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.image_fraction <= 1.0:
            raise ValueError(f"image_fraction must be in [0, 1], got {self.image_fraction}")
        if not 0.0 < self.target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {self.target_fpr}")
        unknown = sorted(set(self.caps) - set(DEFAULT_CAPS))
        if unknown:
            raise ValueError(f"unknown seed sources {unknown}; known: {sorted(DEFAULT_CAPS)}")
        if not self.pools or any(p not in POOLS for p in self.pools):
            raise ValueError(f"pools must be a non-empty subset of {POOLS}, got {self.pools}")

    def plan(self) -> SeedPlan:
        """The seed plan of this run."""
        return SeedPlan(
            seed=self.seed,
            caps=dict(self.caps),
            image_fraction=self.image_fraction,
            strategies_per_image_seed=self.strategies_per_image_seed,
        )


class Rows(NamedTuple):
    """Feature rows of many dialogues, one per user-turn prefix."""

    x: FloatArray
    harm: npt.NDArray[np.float32]
    """1 harmful so far, 0 benign, NaN unlabelled (early prefixes of a natural harmful one)."""
    category: npt.NDArray[np.int64]
    """Index into `CATEGORIES`; -1 where the row is not harmful or the category is unknown."""
    strategy: npt.NDArray[np.int64]
    example: npt.NDArray[np.int64]
    """Which example (index into the list given) each row belongs to."""


def featurize(reader: DialogueReader, examples: Sequence[GuardExample]) -> Rows:
    """Read every example into rows (caches must be primed, or this embeds as it goes)."""
    rows: list[FloatArray] = []
    harm: list[float] = []
    cats: list[int] = []
    strats: list[int] = []
    owner: list[int] = []

    def collect(_state: ConversationState, row: FloatArray) -> None:
        rows.append(row)

    for index, example in enumerate(examples):
        reader.extend(reader.new_state(), example.sample.dialogue, collect)
        labels = example.labels()
        cat = CATEGORIES.index(example.category.value) if example.category else -1
        strat = STRATEGY_NAMES.index(example.strategy)
        harm += [float("nan") if y is None else float(y) for y in labels]
        cats += [cat if y else -1 for y in labels]
        strats += [strat] * len(labels)
        owner += [index] * len(labels)
    return Rows(
        stack_rows(rows, feature_dim(reader.encoder.dim)),
        np.asarray(harm, dtype=np.float32),
        np.asarray(cats, dtype=np.int64),
        np.asarray(strats, dtype=np.int64),
        np.asarray(owner, dtype=np.int64),
    )


def take(rows: Rows, keep: Sequence[int]) -> Rows:
    """The rows of the examples `keep` (indices into the list `rows` was built from).

    `example` is renumbered to positions in `keep`: the result is the rows of
    `[examples[i] for i in keep]`, in that order.
    """
    position = np.full(int(rows.example.max(initial=-1)) + 1, -1, dtype=np.int64)
    position[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep))
    new = position[rows.example]
    order = np.flatnonzero(new >= 0)
    order = order[np.argsort(new[order], kind="stable")]
    return Rows(
        rows.x[order], rows.harm[order], rows.category[order], rows.strategy[order], new[order]
    )


def _padded(rows: Rows, mean: FloatArray, scale: FloatArray) -> dict[str, Any]:
    """Rows regrouped per dialogue and padded to the longest: (dialogues, turns, ...) tensors."""
    import torch

    bounds = np.flatnonzero(np.diff(rows.example)) + 1
    groups = np.split(np.arange(len(rows.harm)), bounds) if len(rows.harm) else []
    n, longest = len(groups), max((len(g) for g in groups), default=1)
    x = np.zeros((n, longest, rows.x.shape[1]), dtype=np.float32)
    harm = np.zeros((n, longest), dtype=np.float32)
    mask = np.zeros((n, longest), dtype=bool)
    cat = np.full((n, longest), -1, dtype=np.int64)
    strat = np.full((n, longest), -1, dtype=np.int64)
    standard = (rows.x - mean) / scale
    for i, index in enumerate(groups):
        t = len(index)
        x[i, :t], harm[i, :t], mask[i, :t] = standard[index], rows.harm[index], True
        cat[i, :t], strat[i, :t] = rows.category[index], rows.strategy[index]
    return {
        "x": torch.from_numpy(x),
        "harm": torch.from_numpy(harm),
        "mask": torch.from_numpy(mask),
        "cat": torch.from_numpy(cat),
        "strat": torch.from_numpy(strat),
    }


def _early_stopped(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    val_loss: Callable[[], torch.Tensor],
    n: int,
    config: TrainConfig,
) -> tuple[dict[str, torch.Tensor], int]:
    """Minibatch epochs over `n` dialogues until the validation loss stops improving.

    Returns:
        The state dict of the best epoch, and the number of epochs run.
    """
    import torch

    generator = torch.Generator().manual_seed(config.seed)
    best: dict[str, torch.Tensor] | None = None
    best_loss, stale, epochs = float("inf"), 0, 0
    for epoch in range(1, config.max_epochs + 1):
        net.train()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            optimizer.zero_grad()
            batch_loss(order[start : start + config.batch_size]).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        net.eval()
        with torch.no_grad():
            loss = float(val_loss())
        epochs = epoch
        logger.info("epoch %d: validation loss %.4f", epoch, loss)
        if loss < best_loss - 1e-4:
            best_loss, stale = loss, 0
            best = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best is not None
    return best, epochs


def fit_network(train: Rows, val: Rows, config: TrainConfig) -> tuple[dict[str, FloatArray], int]:
    """Fit the per-turn layer, the pooled layer and the heads (see `model.py`).

    Dialogues are the unit of a batch; the running max and mean pools are computed with
    `cummax` / `cumsum` over the turns, so every prefix is a training row at the cost of one
    pass. Training stops when the validation loss has not improved for `patience` epochs,
    and the best epoch's weights are kept.

    Returns:
        The arrays of the best epoch, and the number of epochs run.
    """
    import torch
    from torch import nn

    torch.manual_seed(config.seed)
    mean = train.x.mean(axis=0)
    scale = np.maximum(train.x.std(axis=0), 1e-4).astype(np.float32)
    h, h2 = config.hidden, config.hidden2
    pools = [p for p in POOLS if p in config.pools]
    net = nn.ModuleDict(
        {
            "lin1": nn.Linear(train.x.shape[1], h),
            "lin2": nn.Linear(len(pools) * h, h2),
            "harm": nn.Linear(h2, 1),
            "cat": nn.Linear(h2, len(CATEGORIES)),
            "strat": nn.Linear(h2, len(STRATEGY_NAMES)),
        }
    )
    drop = nn.Dropout(config.dropout)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    labelled = ~np.isnan(train.harm)
    positives = float(train.harm[labelled].sum())
    pos_weight = torch.tensor([(labelled.sum() - positives) / max(positives, 1.0)])

    def loss_of(batch: dict[str, Any]) -> torch.Tensor:
        hidden = drop(torch.relu(net["lin1"](batch["x"])))
        turns = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)[None, :, None]
        pooled: list[torch.Tensor] = []
        for name in pools:
            if name == "last":
                pooled.append(hidden)
            elif name == "max":
                pooled.append(torch.cummax(hidden, dim=1).values)
            else:
                pooled.append(torch.cumsum(hidden, 1) / turns)
        z = drop(torch.relu(net["lin2"](torch.cat(pooled, dim=-1))))
        mask = batch["mask"]
        known = mask & ~torch.isnan(batch["harm"])
        harm = nn.functional.binary_cross_entropy_with_logits(
            net["harm"](z).squeeze(-1)[known], batch["harm"][known], pos_weight=pos_weight
        )
        strat = nn.functional.cross_entropy(net["strat"](z)[mask], batch["strat"][mask])
        total = harm + config.strategy_weight * strat
        cats = batch["cat"][mask]
        if bool((cats >= 0).any()):
            total = total + config.category_weight * nn.functional.cross_entropy(
                net["cat"](z)[mask], cats, ignore_index=-1
            )
        return total

    train_t, val_t = _padded(train, mean, scale), _padded(val, mean, scale)
    best, epochs = _early_stopped(
        nn.ModuleList([net, drop]),
        optimizer,
        lambda pick: loss_of({k: v[pick] for k, v in train_t.items()}),
        lambda: loss_of(val_t),
        len(train_t["x"]),
        config,
    )
    best = {k.removeprefix("0."): v for k, v in best.items()}
    arrays = {"mean": mean, "scale": scale}
    for name, key in (("1", "lin1"), ("2", "lin2"), ("_harm", "harm"), ("_cat", "cat")):
        arrays[f"w{name}"] = best[f"{key}.weight"].numpy().T
        arrays[f"b{name}"] = best[f"{key}.bias"].numpy()
    arrays["w_strat"] = best["strat.weight"].numpy().T
    arrays["b_strat"] = best["strat.bias"].numpy()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, epochs


def fit_scorer(
    train: Rows,
    val: Rows,
    config: TrainConfig,
    dim: int,
    weights: npt.NDArray[np.float32] | None = None,
) -> dict[str, FloatArray]:
    """Fit the harm scorer g on the embedding channels (see `model.py`).

    A prefix's logit is the running maximum over its turns of the highest channel logit, the
    same computation `ModeratorModel.turn_harm` and the moderator make; the loss is the
    class-weighted log loss on every labelled prefix (times the dialogue's weight in
    `weights`, one per dialogue of `train`), with early stopping on validation.
    """
    import torch
    from torch import nn

    torch.manual_seed(config.seed)

    def padded(rows: Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        channels = rows.x[:, : CHANNELS * dim].reshape(len(rows.x), CHANNELS, dim)
        bounds = np.flatnonzero(np.diff(rows.example)) + 1
        groups = np.split(np.arange(len(rows.harm)), bounds) if len(rows.harm) else []
        longest = max((len(g) for g in groups), default=1)
        x = np.zeros((len(groups), longest, CHANNELS, dim), dtype=np.float32)
        y = np.full((len(groups), longest), np.nan, dtype=np.float32)
        for i, index in enumerate(groups):
            x[i, : len(index)], y[i, : len(index)] = channels[index], rows.harm[index]
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(~np.isnan(y))

    net = nn.Sequential(
        nn.Linear(dim, config.scorer_hidden),
        nn.ReLU(),
        nn.Dropout(config.scorer_dropout),
        nn.Linear(config.scorer_hidden, 1),
    )
    floor = torch.tensor(EMPTY_LOGIT)

    def prefix_logits(x: torch.Tensor) -> torch.Tensor:
        logits = net(x).squeeze(-1)
        logits = torch.where(x.abs().sum(-1) > 0, logits, floor).max(dim=-1).values
        return torch.cummax(logits, dim=1).values

    optimizer = torch.optim.AdamW(
        net.parameters(), lr=config.lr, weight_decay=config.scorer_weight_decay
    )
    (xt, yt, kt), (xv, yv, kv) = padded(train), padded(val)
    wt = torch.ones(len(xt)) if weights is None else torch.from_numpy(weights.astype(np.float32))
    positives = float((yt * wt[:, None])[kt].sum())
    total = float((kt * wt[:, None]).sum())
    pos_weight = torch.tensor([(total - positives) / max(positives, 1.0)])

    def loss_of(
        logits: torch.Tensor, y: torch.Tensor, known: torch.Tensor, w: torch.Tensor | None = None
    ) -> torch.Tensor:
        each = nn.functional.binary_cross_entropy_with_logits(
            logits[known], y[known], pos_weight=pos_weight, reduction="none"
        )
        if w is None:
            return each.mean()
        row_w = w[:, None].expand_as(y)[known]
        return (each * row_w).sum() / row_w.sum()

    best, _epochs = _early_stopped(
        net,
        optimizer,
        lambda pick: loss_of(prefix_logits(xt[pick]), yt[pick], kt[pick], wt[pick]),
        lambda: loss_of(prefix_logits(xv), yv, kv),
        len(xt),
        config,
    )
    return {
        "g_w1": best["0.weight"].numpy().T,
        "g_b1": best["0.bias"].numpy(),
        "g_w2": best["3.weight"].numpy().T,
        "g_b2": best["3.bias"].numpy(),
    }


def running_max_logits(model: ModeratorModel, rows: Rows) -> npt.NDArray[np.float64]:
    """The running maximum of the harm logit within each dialogue, row by row."""
    out = np.empty(len(rows.harm), dtype=np.float64)
    bounds = np.flatnonzero(np.diff(rows.example)) + 1
    for index in np.split(np.arange(len(rows.harm)), bounds) if len(rows.harm) else []:
        out[index] = np.maximum.accumulate(model.forward_sequence(rows.x[index]).harm)
    return out


def fit_platt(z: npt.NDArray[np.float64], y: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising the log loss of sigmoid(a z + b) (L-BFGS)."""
    import torch

    known = ~np.isnan(y)
    z, y = z[known], y[known]
    zt, yt = torch.from_numpy(z.astype(np.float64)), torch.from_numpy(y.astype(np.float64))
    a = torch.ones(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([a, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * zt + b, yt)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return float(a.detach()[0]), float(b.detach()[0])


def _log_loss(p: npt.NDArray[np.float64], y: npt.NDArray[np.float32]) -> float:
    known = ~np.isnan(y)
    p, y = np.clip(p[known], 1e-7, 1 - 1e-7), y[known]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def dialogue_scores(
    risks: npt.NDArray[np.float64], rows: Rows, examples: Sequence[GuardExample]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """(harmful, final risk) per dialogue of `rows` from per-row running-max `risks`.

    The final row of a dialogue holds the running maximum, so it is the dialogue's risk.
    """
    last = {int(e): i for i, e in enumerate(rows.example)}
    order = sorted(last)
    return (
        np.array([examples[i].harmful for i in order], dtype=bool),
        np.array([risks[last[i]] for i in order], dtype=np.float64),
    )


class Prepared(NamedTuple):
    """Every labelled dialogue of a plan, read once into feature rows (shared by LOSO folds)."""

    examples: list[GuardExample]
    rows: Rows
    """Rows of `examples`, in order."""
    reader: DialogueReader
    timings: dict[str, float]


def prepare(
    config: TrainConfig,
    *,
    progress: Progress | None = None,
    encoder: CachedEncoder | None = None,
    analyzer: ImageAnalyzer | None = None,
) -> Prepared:
    """Build the plan's dialogues (minus `leave_out`), prime the caches and featurize them all.

    Raises:
        PrerequisiteError: The data is missing.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    examples = [
        e
        for e in load_examples(config.data_root, config.plan())
        if e.source not in config.leave_out
    ]
    timings["build_s"] = time.perf_counter() - clock
    encoder = encoder or CachedEncoder(embed, EMBEDDING_DIM, capacity=None)
    analyzer = analyzer or ImageAnalyzer(nudity=no_nudity, capacity=None)
    reader = DialogueReader(encoder, analyzer)
    clock = time.perf_counter()
    prime(reader, [e.sample.dialogue for e in examples], progress)
    timings["prime_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    rows = featurize(reader, examples)
    timings["features_s"] = time.perf_counter() - clock
    return Prepared(examples, rows, reader, timings)


def source_thresholds(
    final: npt.NDArray[np.float64],
    harmful: npt.NDArray[np.bool_],
    sources: Sequence[str],
    fpr: float,
) -> dict[str, float]:
    """Per benign source, the lowest threshold flagging at most `fpr` of its dialogues."""
    names = np.asarray(sources)
    return {
        source: threshold_at_fpr(final[~harmful & (names == source)], fpr)
        for source in sorted(set(names[~harmful].tolist()))
    }


def fit_model(
    train_rows: Rows,
    train_examples: Sequence[GuardExample],
    val_rows: Rows,
    val_examples: Sequence[GuardExample],
    config: TrainConfig,
) -> tuple[ModeratorModel, dict[str, Any]]:
    """Fit, round, calibrate and set the threshold and band; (model, validation report).

    The threshold is the highest of the per-benign-source thresholds at `target_fpr`, so no
    benign source seen in validation is flagged more often than that; the band is set the same
    way at `band_fprs`.
    """
    arrays, epochs = fit_network(train_rows, val_rows, config)
    dim = (train_rows.x.shape[1] - len(SCALAR_NAMES)) // CHANNELS
    weights = np.array(
        [config.natural_harmful_weight if e.natural and e.harmful else 1.0 for e in train_examples],
        dtype=np.float32,
    )
    arrays |= fit_scorer(train_rows, val_rows, config, dim, weights)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    pools = tuple(p for p in POOLS if p in config.pools)
    draft = ModeratorModel(
        arrays, (1.0, 0.0), CATEGORIES, STRATEGY_NAMES, 0.5, (0.0, 1.0), pools=pools
    ).rounded()
    val_z = running_max_logits(draft, val_rows)
    platt = fit_platt(val_z, val_rows.harm)
    calibrated = ModeratorModel(
        arrays, platt, CATEGORIES, STRATEGY_NAMES, 0.5, (0.0, 1.0), pools=pools
    ).rounded()
    val_risk = np.asarray(calibrated.calibrate(val_z), dtype=np.float64)
    harmful, final = dialogue_scores(val_risk, val_rows, val_examples)
    sources = [e.source for e in val_examples]
    per_source = source_thresholds(final, harmful, sources, config.target_fpr)
    threshold = min(max(per_source.values(), default=0.5), 1.0)
    lo = min(
        max(source_thresholds(final, harmful, sources, config.band_fprs[0]).values()), threshold
    )
    hi = max(
        max(source_thresholds(final, harmful, sources, config.band_fprs[1]).values()), threshold
    )
    names = np.asarray(sources)
    labelled = ~np.isnan(val_rows.harm)
    report = {
        "epochs": epochs,
        "prefix_log_loss_before_platt": _log_loss(1 / (1 + np.exp(-val_z)), val_rows.harm),
        "prefix_log_loss": _log_loss(val_risk, val_rows.harm),
        "prefix_auroc": auroc(val_rows.harm[labelled] > 0.5, val_risk[labelled]),
        "dialogue_auroc": auroc(harmful, final),
        "dialogue_tpr_at_threshold": float(np.mean(final[harmful] >= threshold)),
        "dialogue_fpr_at_threshold": float(np.mean(final[~harmful] >= threshold)),
        "dialogue_share_in_band": float(np.mean((final >= lo) & (final <= hi))),
        "benign_source_thresholds": per_source,
        "by_source": {
            source: {
                "harmful": int((harmful & (names == source)).sum()),
                "benign": int((~harmful & (names == source)).sum()),
                "tpr": rate(final[harmful & (names == source)] >= threshold),
                "fpr": rate(final[~harmful & (names == source)] >= threshold),
            }
            for source in sorted(set(sources))
        },
    }
    model = ModeratorModel(
        calibrated.arrays, platt, CATEGORIES, STRATEGY_NAMES, threshold, (lo, hi), pools=pools
    )
    return model, report


def train(
    config: TrainConfig,
    *,
    progress: Progress | None = None,
    encoder: CachedEncoder | None = None,
    analyzer: ImageAnalyzer | None = None,
    evaluator: Callable[[ModeratorModel, list[GuardExample]], dict[str, Any]] | None = None,
) -> ModeratorModel:
    """Run the whole training (see the module docstring) and save the model to `config.out`.

    Args:
        config: The run's settings.
        progress: Called while images and texts are processed.
        encoder: Text encoder with cache (default: MiniLM, unbounded cache).
        analyzer: Image analyzer (default: OCR bridge; NudeNet is not a learned feature).
        evaluator: Computes the test metrics (default: `evaluate_examples` on a moderator
            sharing these caches).

    Returns:
        The saved model.

    Raises:
        PrerequisiteError: The data is missing, or a split came out empty.
    """
    prepared = prepare(config, progress=progress, encoder=encoder, analyzer=analyzer)
    examples, timings = prepared.examples, prepared.timings
    index = {s: [i for i, e in enumerate(examples) if e.split == s] for s in SPLITS}
    by_split = {s: [examples[i] for i in keep] for s, keep in index.items()}
    for name, part in by_split.items():
        if not part or all(e.harmful for e in part) or not any(e.harmful for e in part):
            raise PrerequisiteError(f"the {name} split has no harmful/benign mix; add seeds")
    rows = {name: take(prepared.rows, keep) for name, keep in index.items()}
    clock = time.perf_counter()
    model, validation = fit_model(
        rows["train"], by_split["train"], rows["validation"], by_split["validation"], config
    )
    timings["fit_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    if evaluator is None:
        reader = prepared.reader
        images = ImageAnalyzer(reader.images.bridge)
        moderator = DialogueModerator(model, encoder=reader.encoder, images=images)
        test = evaluate_examples(moderator, by_split["test"])
    else:
        test = evaluator(model, by_split["test"])
    timings["test_s"] = time.perf_counter() - clock
    plan = config.plan()
    metadata = {
        "model": f"per turn {feature_dim(EMBEDDING_DIM)}→{config.hidden} (ReLU), pooled "
        f"[{', '.join(model.pools)}] → {config.hidden2} (ReLU) → harm / category / "
        f"strategy heads; float16 weights; {EMBEDDER_PIN}; OCR via rapidocr-onnxruntime",
        "command": f"safeturn guard train --data-root DATA --seed {config.seed} --out OUT",
        "trained_on": dt.date.today().isoformat(),
        "seed": config.seed,
        "plan": {
            "seed": plan.seed,
            "caps": dict(plan.caps),
            "image_fraction": plan.image_fraction,
            "strategies_per_image_seed": plan.strategies_per_image_seed,
        },
        "config": {
            k: v for k, v in asdict(config).items() if k not in ("data_root", "out", "caps")
        },
        "label_rule": LABEL_RULE,
        "threshold_rule": f"lowest risk flagging <= {config.target_fpr:.0%} of the benign "
        "validation dialogues of every benign source (dialogue risk = running max over its "
        "turns)",
        "band_rule": f"thresholds at {config.band_fprs[0]:.0%} and {config.band_fprs[1]:.0%} "
        "benign validation FPR, per benign source",
        "data": counts(examples),
        "rows": {name: len(r.harm) for name, r in rows.items()},
        "images_analyzed": prepared.reader.images.analyzed,
        "texts_embedded": prepared.reader.encoder.embedded,
        "epochs": validation.pop("epochs"),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "validation": validation,
        "test": test,
    }
    model = dataclasses.replace(model, metadata=metadata)
    model.save(config.out)
    return model
