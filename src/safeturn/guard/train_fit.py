"""Fit the moderator's two networks with torch: the turn network and the harm scorer g.

Both train on whole dialogues (a batch is a set of dialogues padded to the longest, every
prefix a labelled row) with AdamW and stop early on the validation loss, keeping the best
epoch. The layouts they return are the arrays `ModeratorModel` reads (see `model.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from safeturn.guard.base import STRATEGY_NAMES
from safeturn.guard.features import FloatArray
from safeturn.guard.model import CHANNELS, EMPTY_LOGIT, POOLS
from safeturn.guard.train_config import CATEGORIES, ModeratorTrainConfig
from safeturn.guard.train_rows import Rows

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Loss = Callable[[dict[str, Any]], "torch.Tensor"]
"""The training loss of a batch of padded dialogues (see `_padded`)."""


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
    config: ModeratorTrainConfig,
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


def fit_network(
    train: Rows, val: Rows, config: ModeratorTrainConfig
) -> tuple[dict[str, FloatArray], int]:
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
    pools = [p for p in POOLS if p in config.pools]
    net = _network(train.x.shape[1], len(pools), config)
    drop = nn.Dropout(config.dropout)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    labelled = ~np.isnan(train.harm)
    positives = float(train.harm[labelled].sum())
    pos_weight = torch.tensor([(labelled.sum() - positives) / max(positives, 1.0)])
    loss_of = _network_loss(net, drop, pools, pos_weight, config)
    train_t, val_t = _padded(train, mean, scale), _padded(val, mean, scale)
    best, epochs = _early_stopped(
        nn.ModuleList([net, drop]),
        optimizer,
        lambda pick: loss_of({k: v[pick] for k, v in train_t.items()}),
        lambda: loss_of(val_t),
        len(train_t["x"]),
        config,
    )
    return _network_arrays(best, mean, scale), epochs


def _network(inputs: int, pools: int, config: ModeratorTrainConfig) -> torch.nn.ModuleDict:
    """The untrained layers, created in a fixed order (the seeded initialisation depends on it)."""
    from torch import nn

    h, h2 = config.hidden, config.hidden2
    return nn.ModuleDict(
        {
            "lin1": nn.Linear(inputs, h),
            "lin2": nn.Linear(pools * h, h2),
            "harm": nn.Linear(h2, 1),
            "cat": nn.Linear(h2, len(CATEGORIES)),
            "strat": nn.Linear(h2, len(STRATEGY_NAMES)),
        }
    )


def _pooled(hidden: torch.Tensor, pools: list[str]) -> torch.Tensor:
    """Each prefix's pools of the per-turn hidden vectors, concatenated in `pools` order."""
    import torch

    turns = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)[None, :, None]
    pooled: list[torch.Tensor] = []
    for name in pools:
        if name == "last":
            pooled.append(hidden)
        elif name == "max":
            pooled.append(torch.cummax(hidden, dim=1).values)
        else:
            pooled.append(torch.cumsum(hidden, 1) / turns)
    return torch.cat(pooled, dim=-1)


def _network_loss(
    net: torch.nn.ModuleDict,
    drop: torch.nn.Module,
    pools: list[str],
    pos_weight: torch.Tensor,
    config: ModeratorTrainConfig,
) -> Loss:
    """Weighted harm log loss on labelled prefixes plus the strategy and category heads."""
    import torch
    from torch import nn

    def loss_of(batch: dict[str, Any]) -> torch.Tensor:
        hidden = drop(torch.relu(net["lin1"](batch["x"])))
        z = drop(torch.relu(net["lin2"](_pooled(hidden, pools))))
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

    return loss_of


def _network_arrays(
    best: dict[str, torch.Tensor], mean: FloatArray, scale: FloatArray
) -> dict[str, FloatArray]:
    """The best epoch's weights under the names `ModeratorModel` reads (inputs x weights)."""
    best = {k.removeprefix("0."): v for k, v in best.items()}
    arrays = {"mean": mean, "scale": scale}
    for name, key in (("1", "lin1"), ("2", "lin2"), ("_harm", "harm"), ("_cat", "cat")):
        arrays[f"w{name}"] = best[f"{key}.weight"].numpy().T
        arrays[f"b{name}"] = best[f"{key}.bias"].numpy()
    arrays["w_strat"] = best["strat.weight"].numpy().T
    arrays["b_strat"] = best["strat.bias"].numpy()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def fit_scorer(
    train: Rows,
    val: Rows,
    config: ModeratorTrainConfig,
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
    net = nn.Sequential(
        nn.Linear(dim, config.scorer_hidden),
        nn.ReLU(),
        nn.Dropout(config.scorer_dropout),
        nn.Linear(config.scorer_hidden, 1),
    )
    floor = torch.tensor(EMPTY_LOGIT)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=config.lr, weight_decay=config.scorer_weight_decay
    )
    (xt, yt, kt), (xv, yv, kv) = _channels_padded(train, dim), _channels_padded(val, dim)
    wt = torch.ones(len(xt)) if weights is None else torch.from_numpy(weights.astype(np.float32))
    positives = float((yt * wt[:, None])[kt].sum())
    total = float((kt * wt[:, None]).sum())
    pos_weight = torch.tensor([(total - positives) / max(positives, 1.0)])
    best, _epochs = _early_stopped(
        net,
        optimizer,
        lambda pick: _scorer_loss(
            _prefix_logits(net, floor, xt[pick]), yt[pick], kt[pick], pos_weight, wt[pick]
        ),
        lambda: _scorer_loss(_prefix_logits(net, floor, xv), yv, kv, pos_weight),
        len(xt),
        config,
    )
    return {
        "g_w1": best["0.weight"].numpy().T,
        "g_b1": best["0.bias"].numpy(),
        "g_w2": best["3.weight"].numpy().T,
        "g_b2": best["3.bias"].numpy(),
    }


def _channels_padded(rows: Rows, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dialogues, turns, channels, dim) embeddings, prefix labels (NaN padded) and known mask."""
    import torch

    channels = rows.x[:, : CHANNELS * dim].reshape(len(rows.x), CHANNELS, dim)
    bounds = np.flatnonzero(np.diff(rows.example)) + 1
    groups = np.split(np.arange(len(rows.harm)), bounds) if len(rows.harm) else []
    longest = max((len(g) for g in groups), default=1)
    x = np.zeros((len(groups), longest, CHANNELS, dim), dtype=np.float32)
    y = np.full((len(groups), longest), np.nan, dtype=np.float32)
    for i, index in enumerate(groups):
        x[i, : len(index)], y[i, : len(index)] = channels[index], rows.harm[index]
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(~np.isnan(y))


def _prefix_logits(net: torch.nn.Module, floor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Running max over turns of the best channel's logit (empty channels score `floor`)."""
    import torch

    logits = net(x).squeeze(-1)
    logits = torch.where(x.abs().sum(-1) > 0, logits, floor).max(dim=-1).values
    return torch.cummax(logits, dim=1).values


def _scorer_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    known: torch.Tensor,
    pos_weight: torch.Tensor,
    w: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-weighted log loss on the known prefixes, each weighted by its dialogue's `w`."""
    from torch import nn

    each = nn.functional.binary_cross_entropy_with_logits(
        logits[known], y[known], pos_weight=pos_weight, reduction="none"
    )
    if w is None:
        return each.mean()
    row_w = w[:, None].expand_as(y)[known]
    return (each * row_w).sum() / row_w.sum()
