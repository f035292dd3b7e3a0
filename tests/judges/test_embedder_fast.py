"""The fast inference path: length buckets, precision switch, and equivalence to float32."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from safeturn.judges.fast_inference import (
    PRECISION_ENV,
    THREADS_ENV,
    bf16_native,
    fast_inference_model,
    inference_precision,
    inference_threads,
    length_buckets,
    torch_threads,
)


@pytest.mark.parametrize(
    ("lengths", "batch_size", "budget"),
    [([5, 100, 7, 90, 3, 256, 12], 4, 300), ([10] * 50, 8, 10_000), ([300, 2, 400], 32, 100)],
)
def test_length_buckets_cover_every_item_within_limits(
    lengths: list[int], batch_size: int, budget: int
) -> None:
    groups = length_buckets(lengths, batch_size=batch_size, token_budget=budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        assert len(group) <= batch_size
        padded = len(group) * max(lengths[i] for i in group)
        assert padded <= budget or len(group) == 1  # an over-long item goes alone
    widths = [max(lengths[i] for i in g) for g in groups]
    assert widths == sorted(widths)  # short items are never padded up to long ones


def test_length_buckets_reject_bad_limits() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        length_buckets([1, 2], batch_size=0, token_budget=10)


def test_precision_comes_from_argument_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert inference_precision() == "fp32"
    assert inference_precision("BF16") == "bf16"
    monkeypatch.setenv(PRECISION_ENV, "auto")
    assert inference_precision() == ("bf16" if bf16_native() else "fp32")
    monkeypatch.delenv(PRECISION_ENV)
    assert inference_precision() == inference_precision("auto")


def test_unknown_precision_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PRECISION_ENV, "int4")
    with pytest.raises(ValueError, match=f"{PRECISION_ENV}='int4'"):
        inference_precision()
    with pytest.raises(ValueError, match="precision='fp8'"):
        inference_precision("fp8")


def test_fast_inference_model_casts_in_place_for_inference() -> None:
    layer = torch.nn.Linear(8, 2)
    layer.train()
    assert fast_inference_model(layer, precision="bf16") is layer
    assert layer.weight.dtype == torch.bfloat16
    assert not layer.training and not layer.weight.requires_grad
    assert fast_inference_model(layer, precision="fp32").weight.dtype == torch.float32
    with pytest.raises(ValueError, match="threads=0"):
        fast_inference_model(layer, threads=0)


def test_threads_leave_a_core_and_never_raise_a_callers_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with torch_threads(2):
        assert inference_threads() == 1
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    with torch_threads(1):  # e.g. the guard's one-thread worker
        assert inference_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert inference_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "zero")
    with pytest.raises(ValueError, match=f"{THREADS_ENV}='zero'"):
        inference_threads()


def test_torch_threads_restores_the_setting() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.fixture(scope="module")
def replies(shared_data: Path) -> list[tuple[str, str]]:
    """24 real (request, reply) pairs from JailbreakBench and XSTest, of every length."""
    from safeturn.judges.train_classifier import load_examples

    examples, _ = load_examples(shared_data)
    picked = random.Random(7).sample(examples, 24)
    return [(e.request, e.response) for e in picked]


@pytest.mark.slow
def test_bf16_embeddings_match_float32(replies: list[tuple[str, str]]) -> None:
    from safeturn.judges.embedder import embed

    texts = [reply for _, reply in replies] + ["", "ok"]
    reference = embed(texts, precision="fp32")
    fast = embed(texts, precision="bf16")
    cosine = (reference * fast).sum(axis=1)
    assert cosine.min() >= 0.99, f"least cosine {cosine.min():.4f} at {int(cosine.argmin())}"
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_length_buckets_do_not_change_the_vectors(replies: list[tuple[str, str]]) -> None:
    from safeturn.judges.embedder import embed

    texts = [reply for _, reply in replies[:8]]
    bucketed = embed(texts, precision="fp32")
    alone = np.stack([embed([t], precision="fp32")[0] for t in texts])  # no padding at all
    assert ((bucketed * alone).sum(axis=1)).min() >= 0.9999


@pytest.mark.slow
def test_classifier_probabilities_match_float32(
    replies: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from safeturn.judges.classifier import ClassifierJudge

    judge = ClassifierJudge()
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    reference = np.array(judge.score_pairs(replies))
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    fast = np.array(judge.score_pairs(replies))
    assert np.abs(fast - reference).max() <= 0.02
    threshold = judge.head.threshold
    flips = np.sum((fast >= threshold) != (reference >= threshold))
    assert flips <= 1  # at most a reply sitting on the threshold may change side
