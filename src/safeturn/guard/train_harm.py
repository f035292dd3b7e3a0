"""Fine-tune the moderator's harm reader (`harm_encoder.py`) on the training dialogues.

A prefix's label says whether the dialogue has turned harmful by that turn, not which text
did it: the turn itself, the window that resolves its "it", an image's text or a system
message. So the loss reads exactly what the moderator computes (multiple-instance learning):
a turn's logit is the highest of its texts' logits, a prefix's is the running maximum over its
turns, and the class-weighted log loss is taken on every labelled prefix. Every distinct text
goes through the frozen lower layers once (`FrozenStates`, shared by the folds of a
leave-one-source-out run); a step runs only the tuned layers, on the texts of a few dialogues.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from safeturn.guard.cache import CachedEncoder, text_digest
from safeturn.guard.features import SCALAR_NAMES
from safeturn.guard.harm_encoder import HarmEncoder, new_top
from safeturn.guard.model import CHANNELS, EMPTY_LOGIT
from safeturn.guard.train_config import ModeratorTrainConfig
from safeturn.judges.cross_encoder import base_encoder, frozen_states, pad_ids
from safeturn.judges.embedder import ENCODER_LOCK, MAX_TOKENS
from safeturn.judges.fast_inference import length_buckets

if TYPE_CHECKING:
    import torch

    from safeturn.guard.train_rows import Rows

logger = logging.getLogger(__name__)

TOKEN_BUDGET = 4096
"""Most padded tokens per pass of the tuned layers."""


class FrozenStates:
    """Token states after the frozen layers, per distinct text, computed once (bfloat16).

    Args:
        tuned_layers: How many of the base's top layers are tuned (the rest are frozen).
    """

    def __init__(self, tuned_layers: int) -> None:
        self.tuned_layers = tuned_layers
        self._states: dict[str, torch.Tensor] = {}

    def ensure(self, texts: Iterable[str]) -> None:
        """Compute the states of every text not seen yet, in length buckets."""
        import torch

        todo = [t for t in dict.fromkeys(texts) if t.strip() and t not in self._states]
        if not todo:
            return
        tokenizer, base = base_encoder()
        frozen = int(base.config.num_hidden_layers) - self.tuned_layers
        with ENCODER_LOCK:
            ids = tokenizer(todo, truncation=True, max_length=MAX_TOKENS)["input_ids"]
        lengths = [len(i) for i in ids]
        for chunk in length_buckets(lengths, batch_size=128, token_budget=TOKEN_BUDGET):
            batch, mask = pad_ids([ids[i] for i in chunk])
            with ENCODER_LOCK:
                hidden = frozen_states(base, batch, mask, frozen)
            for row, i in enumerate(chunk):
                self._states[todo[i]] = hidden[row, : lengths[i]].to(torch.bfloat16).clone()

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(states, mask) of `texts`, float32, right-padded to the longest."""
        import torch

        found = [self._states[t] for t in texts]
        width = max(s.shape[0] for s in found)
        states = torch.zeros(len(found), width, found[0].shape[1])
        mask = torch.zeros(len(found), width, dtype=torch.long)
        for row, s in enumerate(found):
            states[row, : s.shape[0]] = s.float()
            mask[row, : s.shape[0]] = 1
        return states, mask

    def length(self, text: str) -> int:
        """Token count of a text whose states are known."""
        return int(self._states[text].shape[0])


def row_texts(rows: Rows) -> list[str]:
    """Every distinct non-blank text the rows were made of."""
    return [t for t in dict.fromkeys(t for texts in rows.texts for t in texts) if t.strip()]


def text_logits(
    top: Any, texts: Sequence[str], states: FrozenStates
) -> tuple[torch.Tensor, dict[str, int]]:
    """The top's logit for each text (with gradient when the top trains), and each's index."""
    import torch

    states.ensure(texts)
    lengths = [states.length(t) for t in texts]
    parts: list[torch.Tensor] = []
    order: list[int] = []
    for chunk in length_buckets(lengths, batch_size=256, token_budget=TOKEN_BUDGET):
        batch, mask = states.batch([texts[i] for i in chunk])
        parts.append(top(batch, mask))
        order += chunk
    out = torch.cat(parts)[torch.argsort(torch.tensor(order))]
    return out, {t: i for i, t in enumerate(texts)}


def turn_logits(
    rows_texts: Sequence[tuple[str, ...]], logits: torch.Tensor, index: Mapping[str, int]
) -> torch.Tensor:
    """Each row's logit: the highest of its texts' (`EMPTY_LOGIT` when all are blank)."""
    import torch

    width = max((len(t) for t in rows_texts), default=1)
    picks = torch.full((len(rows_texts), width), len(logits), dtype=torch.long)
    for r, texts in enumerate(rows_texts):
        present = [index[t] for t in texts if t.strip()]
        picks[r, : len(present)] = torch.tensor(present, dtype=torch.long)
    padded = torch.cat([logits, torch.tensor([EMPTY_LOGIT])])
    return padded[picks].max(dim=1).values


def _dialogues(rows: Rows) -> list[npt.NDArray[np.int64]]:
    bounds = np.flatnonzero(np.diff(rows.example)) + 1
    return list(np.split(np.arange(len(rows.harm)), bounds)) if len(rows.harm) else []


def _prefix_loss(
    top: Any,
    rows: Rows,
    dialogues: Sequence[npt.NDArray[np.int64]],
    states: FrozenStates,
    pos_weight: torch.Tensor,
    weights: npt.NDArray[np.float32],
) -> torch.Tensor:
    """The weighted log loss of the running-max logits of `dialogues` (row index arrays)."""
    import torch

    picked = np.concatenate(dialogues)
    texts = list(dict.fromkeys(t for r in picked for t in rows.texts[r] if t.strip()))
    logits, index = text_logits(top, texts, states)
    per_row = turn_logits([rows.texts[r] for r in picked], logits, index)
    prefix, start = [], 0
    for rows_of in dialogues:
        prefix.append(torch.cummax(per_row[start : start + len(rows_of)], 0).values)
        start += len(rows_of)
    z = torch.cat(prefix)
    y = torch.from_numpy(rows.harm[picked])
    w = torch.from_numpy(np.repeat(weights, [len(d) for d in dialogues]))
    known = ~torch.isnan(y)
    each = torch.nn.functional.binary_cross_entropy_with_logits(
        z[known], y[known], pos_weight=pos_weight, reduction="none"
    )
    return (each * w[known]).sum() / w[known].sum().clamp(min=1e-6)


def fit_harm_reader(
    train: Rows,
    val: Rows,
    config: ModeratorTrainConfig,
    states: FrozenStates,
    weights: npt.NDArray[np.float32] | None = None,
) -> tuple[HarmEncoder, dict[str, Any]]:
    """Fine-tune a harm reader on `train`'s dialogues; keep the epoch best on `val`'s loss.

    Args:
        train: Rows of the training dialogues (with their texts).
        val: Rows of the validation dialogues.
        config: `harm_*` settings, `seed`.
        states: The frozen layers' outputs (filled as needed).
        weights: One loss weight per training dialogue (default 1).

    Returns:
        The reader (float32), and a report: validation loss per epoch, the best epoch.
    """
    import torch

    top = new_top(config.harm_tuned_layers, config.harm_hidden, config.harm_dropout, config.seed)
    optimizer = torch.optim.AdamW(
        [
            {"params": top.layers.parameters(), "lr": config.harm_layer_lr},
            {
                "params": [*top.hidden.parameters(), *top.out.parameters()],
                "lr": config.harm_head_lr,
            },
        ],
        weight_decay=0.01,
    )
    train_dialogues, val_dialogues = _dialogues(train), _dialogues(val)
    w_train = np.ones(len(train_dialogues), np.float32) if weights is None else weights
    w_val = np.ones(len(val_dialogues), np.float32)
    known = train.harm[~np.isnan(train.harm)]
    pos_weight = torch.tensor([(len(known) - known.sum()) / max(float(known.sum()), 1.0)])
    states.ensure([*row_texts(train), *row_texts(val)])
    rng = random.Random(config.seed)
    best: dict[str, torch.Tensor] | None = None
    losses: list[float] = []
    for epoch in range(1, config.harm_epochs + 1):
        top.train()
        order = list(range(len(train_dialogues)))
        rng.shuffle(order)
        for start in range(0, len(order), config.harm_batch):
            pick = order[start : start + config.harm_batch]
            loss = _prefix_loss(
                top, train, [train_dialogues[i] for i in pick], states, pos_weight, w_train[pick]
            )
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        top.eval()
        with torch.no_grad():
            val_loss = float(
                sum(
                    _prefix_loss(
                        top,
                        val,
                        val_dialogues[s : s + 64],
                        states,
                        pos_weight,
                        w_val[s : s + 64],
                    )
                    * len(val_dialogues[s : s + 64])
                    for s in range(0, len(val_dialogues), 64)
                )
                / max(len(val_dialogues), 1)
            )
        logger.info("harm reader epoch %d: validation loss %.4f", epoch, val_loss)
        if not losses or val_loss < min(losses):
            best = {k: v.detach().clone() for k, v in top.state_dict().items()}
        losses.append(val_loss)
    assert best is not None
    top.load_state_dict(best)
    top.requires_grad_(False)
    top.eval()
    report = {"validation_loss": losses, "epoch": int(np.argmin(losses)) + 1}
    return HarmEncoder(top, config.harm_tuned_layers, {"training": report}), report


def score_texts(harm: HarmEncoder, texts: Sequence[str], states: FrozenStates) -> dict[str, float]:
    """The reader's logit of each distinct non-blank text."""
    import torch

    todo = list(dict.fromkeys(t for t in texts if t.strip()))
    out: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(todo), 2048):
            part = todo[start : start + 2048]
            logits, _ = text_logits(harm.top, part, states)
            out.update(zip(part, logits.tolist(), strict=True))
    return out


def score_rows(harm: HarmEncoder | None, rows: Rows, states: FrozenStates | None) -> Rows:
    """`rows` with the logit columns `harm` gives their texts (unchanged without a reader)."""
    if harm is None:
        return rows
    if states is None:
        raise ValueError("scoring rows with a harm reader needs their frozen states")
    return with_logits(rows, score_texts(harm, row_texts(rows), states))


def with_logits(rows: Rows, logits: Mapping[str, float]) -> Rows:
    """`rows` with each channel's harm-logit column set from its texts, as serving sets it.

    The text and window channels carry their own text's logit (0 for a blank text, whose
    vector is all zeros); the image channel the highest of its texts' (see
    `features.pool_images`).
    """
    x = rows.x.copy()
    dim = (x.shape[1] - len(SCALAR_NAMES)) // CHANNELS
    for r, texts in enumerate(rows.texts):
        text, window, *others = texts
        x[r, dim - 1] = logits.get(text, 0.0) if text.strip() else 0.0
        x[r, 2 * dim - 1] = logits.get(window, 0.0) if window.strip() else 0.0
        x[r, 3 * dim - 1] = max((logits[t] for t in others), default=0.0)
    return rows._replace(x=x)


def scored_encoder(
    plain: CachedEncoder, harm: HarmEncoder, logits: Mapping[str, float]
) -> CachedEncoder:
    """A cache of full vectors (embedding + logit) built from `plain`'s embeddings.

    Training has embedded every text once already; the moderator it evaluates must see what
    serving computes, and this gets it without running the encoder again. Texts not given
    are embedded by `harm` on demand.
    """
    out = CachedEncoder(harm.vectors, plain.dim, capacity=None, scored=harm.columns)
    for text, logit in logits.items():
        vector = plain.cache.get(text_digest(text))
        if vector is not None:
            full = np.array(vector, dtype=np.float32)
            full[-1] = logit
            full.setflags(write=False)
            out.cache.put(text_digest(text), full)
    return out
