"""Small stand-ins for the moderator's heavy parts, so plumbing tests need no MiniLM or OCR."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from safeturn.guard.base import STRATEGY_NAMES
from safeturn.guard.cache import CachedEncoder
from safeturn.guard.features import feature_dim
from safeturn.guard.images import ImageAnalyzer
from safeturn.guard.model import ModeratorModel
from safeturn.guard.moderator import DialogueModerator
from safeturn.taxonomy import Category

DIM = 32


def hashing_embed(texts: Sequence[str]) -> np.ndarray:
    """A deterministic bag-of-words embedding: each word hashed to a signed coordinate."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            digest = hashlib.sha256(word.encode()).digest()
            out[row, digest[0] % DIM] += 1.0 if digest[1] % 2 else -1.0
        norm = np.linalg.norm(out[row])
        if norm:
            out[row] /= norm
    return out


def stub_encoder() -> CachedEncoder:
    return CachedEncoder(hashing_embed, DIM, capacity=None)


def constant_model(
    logit: float,
    *,
    category: Category = Category.VIOLENCE,
    strategy: str = "escalation",
    threshold: float = 0.5,
    band: tuple[float, float] = (0.3, 0.7),
    dim: int = DIM,
) -> ModeratorModel:
    """A model whose harm logit is `logit` for every dialogue (risk = sigmoid(logit))."""
    d, h = feature_dim(dim), 4
    categories = tuple(c.value for c in Category)
    b_cat = np.zeros(len(categories), dtype=np.float32)
    b_cat[categories.index(category.value)] = 5.0
    b_strat = np.zeros(len(STRATEGY_NAMES), dtype=np.float32)
    b_strat[STRATEGY_NAMES.index(strategy)] = 5.0
    arrays = {
        "mean": np.zeros(d, dtype=np.float32),
        "scale": np.ones(d, dtype=np.float32),
        "w1": np.zeros((d, h), dtype=np.float32),
        "b1": np.zeros(h, dtype=np.float32),
        "w2": np.zeros((2 * h, h), dtype=np.float32),
        "b2": np.zeros(h, dtype=np.float32),
        "w_harm": np.zeros((h, 1), dtype=np.float32),
        "b_harm": np.array([logit], dtype=np.float32),
        "w_cat": np.zeros((h, len(categories)), dtype=np.float32),
        "b_cat": b_cat,
        "w_strat": np.zeros((h, len(STRATEGY_NAMES)), dtype=np.float32),
        "b_strat": b_strat,
        # the harm scorer: the same logit for every non-empty channel
        "g_w1": np.zeros((dim, h), dtype=np.float32),
        "g_b1": np.zeros(h, dtype=np.float32),
        "g_w2": np.zeros((h, 1), dtype=np.float32),
        "g_b2": np.array([logit], dtype=np.float32),
    }
    return ModeratorModel(arrays, (1.0, 0.0), categories, STRATEGY_NAMES, threshold, band)


def stub_moderator(model: ModeratorModel, **options: object) -> DialogueModerator:
    """A moderator on `model` with the hashing encoder and no nudity detector."""
    images = ImageAnalyzer(nudity=lambda _pixels: 0.0)
    return DialogueModerator(model, encoder=stub_encoder(), images=images, **options)  # type: ignore[arg-type]
