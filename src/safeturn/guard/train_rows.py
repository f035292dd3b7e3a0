"""Training data as feature rows: every labelled dialogue read once, one row per user turn.

`prepare` builds a plan's dialogues, primes the caches (OCR of every distinct image once,
embeddings of every distinct text once) and reads every dialogue through the same
`ConversationState` the moderator uses, so training sees exactly the features serving does.
`take` cuts the rows of one split (or one LOSO fold) out of them without reading anything
again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from safeturn.errors import ConfigError
from safeturn.guard.base import STRATEGY_NAMES
from safeturn.guard.cache import CachedEncoder
from safeturn.guard.dataset import GuardExample, load_examples
from safeturn.guard.features import ConversationState, FloatArray, TurnRecord, feature_dim
from safeturn.guard.harm_encoder import VECTOR_DIM
from safeturn.guard.images import ImageAnalyzer, no_nudity
from safeturn.guard.model import ModeratorModel
from safeturn.guard.reader import DialogueReader, Progress, prime, stack_rows
from safeturn.guard.train_config import CATEGORIES, ModeratorTrainConfig
from safeturn.guard.train_harm import FrozenStates
from safeturn.judges.embedder import EMBEDDING_DIM, embed


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
    texts: npt.NDArray[np.object_]
    """Per row, the texts its vectors came from (`TurnRecord.texts`): the harm reader trains
    on them and `train_harm.with_logits` fills the rows' logit columns from them."""


def featurize(reader: DialogueReader, examples: Sequence[GuardExample]) -> Rows:
    """Read every example into rows (caches must be primed, or this embeds as it goes)."""
    rows: list[FloatArray] = []
    harm: list[float] = []
    cats: list[int] = []
    strats: list[int] = []
    owner: list[int] = []
    texts: list[tuple[str, ...]] = []

    def collect(_state: ConversationState, row: FloatArray) -> None:
        rows.append(row)

    def collect_texts(record: TurnRecord) -> None:
        texts.append(record.texts)

    for index, example in enumerate(examples):
        reader.extend(reader.new_state(), example.sample.dialogue, collect, on_record=collect_texts)
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
        _objects(texts),
    )


def _objects(items: Sequence[tuple[str, ...]]) -> npt.NDArray[np.object_]:
    """A 1-d object array of tuples (numpy would make a 2-d array of equal-length ones)."""
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


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
        rows.x[order],
        rows.harm[order],
        rows.category[order],
        rows.strategy[order],
        new[order],
        rows.texts[order],
    )


def running_max_logits(model: ModeratorModel, rows: Rows) -> npt.NDArray[np.float64]:
    """The running maximum of the harm logit within each dialogue, row by row."""
    out = np.empty(len(rows.harm), dtype=np.float64)
    bounds = np.flatnonzero(np.diff(rows.example)) + 1
    for index in np.split(np.arange(len(rows.harm)), bounds) if len(rows.harm) else []:
        out[index] = np.maximum.accumulate(model.forward_sequence(rows.x[index]).harm)
    return out


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
    states: FrozenStates | None = None
    """The frozen layers' outputs of every text, for the harm reader (None: no reader)."""


def unscored_vectors(texts: Sequence[str]) -> FloatArray:
    """Embeddings with a zero harm-logit column, for reading the training dialogues.

    The rows' logits are set once a reader is trained (`train_harm.with_logits`), so the
    texts are embedded once for every fold of a leave-one-source-out run.
    """
    vectors = embed(texts)
    return np.concatenate([vectors, np.zeros((len(texts), 1), dtype=np.float32)], axis=1)


def prepare(
    config: ModeratorTrainConfig,
    *,
    progress: Progress | None = None,
    encoder: CachedEncoder | None = None,
    analyzer: ImageAnalyzer | None = None,
) -> Prepared:
    """Build the plan's dialogues (minus `leave_out`), prime the caches and featurize them all.

    Raises:
        PrerequisiteError: The data is missing.
        ConfigError: A harm reader is to be trained but `encoder` has no score column.
    """
    reading = config.harm_tuned_layers > 0
    if encoder is not None and reading and encoder.scored != 1:
        raise ConfigError(
            "training a harm reader needs an encoder with one score column (scored=1); "
            "set harm_tuned_layers=0 to train on plain embeddings"
        )
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    examples = [
        e
        for e in load_examples(config.data_root, config.plan())
        if e.source not in config.leave_out
    ]
    timings["build_s"] = time.perf_counter() - clock
    if encoder is None:
        encoder = (
            CachedEncoder(unscored_vectors, VECTOR_DIM, capacity=None, scored=1)
            if reading
            else CachedEncoder(embed, EMBEDDING_DIM, capacity=None)
        )
    analyzer = analyzer or ImageAnalyzer(nudity=no_nudity, capacity=None)
    reader = DialogueReader(encoder, analyzer)
    clock = time.perf_counter()
    prime(reader, [e.sample.dialogue for e in examples], progress)
    timings["prime_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    rows = featurize(reader, examples)
    timings["features_s"] = time.perf_counter() - clock
    states = FrozenStates(config.harm_tuned_layers) if reading else None
    return Prepared(examples, rows, reader, timings, states)
