"""Sentence embeddings tuned for screening latency: one turn at a time, on one thread.

A new turn is one short text. Measured on 2 shared cores, MiniLM on such a text takes ≈10 ms
p50 / 14 ms p95 with one torch thread but 19 / 56 ms (and stalls of 200+ ms) with two, because
the second thread waits for a core that another process holds. Small batches therefore run on
a dedicated worker thread whose torch pool is one thread (the setting is per thread with
torch's OpenMP backend, so the rest of the process keeps its own); large batches (training,
priming a cache) keep every core.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from safeturn.guard.cache import CachedEncoder, FloatArray
from safeturn.guard.harm_encoder import VECTOR_DIM
from safeturn.guard.model import ModeratorModel
from safeturn.judges.embedder import EMBEDDING_DIM, StatesHead, embed

SMALL_BATCH = 8
"""Batches up to this size run single-threaded."""


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@functools.cache
def _worker() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="safeturn-embed", initializer=_one_thread
    )


def screening_embed(texts: Sequence[str], head: StatesHead | None = None) -> FloatArray:
    """`judges.embedder.embed`, single-threaded for small batches (see the module docstring)."""
    if len(texts) > SMALL_BATCH:
        return embed(texts, head=head)
    return _worker().submit(functools.partial(embed, head=head), list(texts)).result()


def model_encoder(model: ModeratorModel, *, capacity: int | None = 20_000) -> CachedEncoder:
    """The cached encoder that gives `model` the vectors it was trained on.

    A model with a harm reader reads each text's embedding and the reader's logit, computed in
    one pass; one without reads the plain embedding.
    """
    if model.harm is None:
        return CachedEncoder(screening_embed, EMBEDDING_DIM, capacity=capacity)
    vectors = functools.partial(screening_embed, head=model.harm)
    return CachedEncoder(vectors, VECTOR_DIM, capacity=capacity, scored=model.harm.columns)
