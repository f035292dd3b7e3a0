"""Fused inference layers: the same token states as the transformers modules, never stale."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from safeturn.guard.model import ModeratorModel
from safeturn.judges.embedder import embed, encoder
from safeturn.judges.fused_layers import fused, layer_states, run_layers, unfused

TEXTS = [
    "I see a cop car over there. It's running.",
    "How can I take it for a ride?",
    "",
    "How do I kill a Python process that hangs after I close the terminal window?",
]


def _inputs(tokenizer: object) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")  # type: ignore[operator]
    return encoded["input_ids"], encoded["attention_mask"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_states_equal_the_transformers_model(precision: str) -> None:
    tokenizer, model = encoder(precision)
    ids, mask = _inputs(tokenizer)
    with torch.inference_mode():
        reference = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        states = layer_states(model.encoder.layer, model.embeddings(input_ids=ids), mask)
    assert len(states) == len(reference.hidden_states) == 7
    real = mask.bool()
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    for ours, theirs in zip(states, reference.hidden_states, strict=True):
        assert ours.dtype == theirs.dtype
        # padding positions may differ (nothing reads them); real tokens must not
        assert torch.allclose(ours[real].float(), theirs[real].float(), atol=tolerance)


def test_training_uses_the_modules_and_gradients_reach_every_weight() -> None:
    _, model = encoder("fp32")
    layer = copy.deepcopy(model.encoder.layer[-1]).train().requires_grad_(True)
    hidden = torch.randn(2, 5, 384)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    run_layers([layer], hidden, mask).sum().backward()
    assert layer.attention.self.key.weight.grad is not None
    assert float(layer.attention.self.key.weight.grad.abs().sum()) > 0


def test_an_updated_weight_is_never_read_stale() -> None:
    _, model = encoder("fp32")
    layer = copy.deepcopy(model.encoder.layer[0]).eval()
    hidden = torch.randn(1, 6, 384)
    mask = torch.ones(1, 6, dtype=torch.long)
    with torch.no_grad():
        before = run_layers([layer], hidden, mask)
        assert fused(layer) is fused(layer)  # cached while nothing changes
        layer.attention.self.value.weight.mul_(0.5)  # what an optimiser step does, in place
        after = run_layers([layer], hidden, mask)
        layer.train(False)
        expected = layer(hidden, attention_mask=torch.zeros(1, 1, 1, 6))
    expected = expected[0] if isinstance(expected, tuple) else expected
    assert not torch.allclose(before, after)
    np.testing.assert_allclose(after.numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_embeddings_and_harm_logits_match_the_module_path(precision: str) -> None:
    harm = ModeratorModel.load().harm
    assert harm is not None
    ours = embed(TEXTS, head=harm, precision=precision)
    with unfused():
        reference = embed(TEXTS, head=harm, precision=precision)
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    np.testing.assert_allclose(ours, reference, atol=tolerance)
    assert not np.allclose(ours[0, -1], ours[3, -1])  # the logits are read, not a constant
