"""BERT layers run for inference with one matrix product for query, key and value.

At screening sizes (two texts of about 40 tokens, one thread) a bfloat16 matrix product costs
about 80 µs whatever its size, so a layer's six products dominate its time and MiniLM's six
layers plus the moderator's two tuned ones cost ≈10 ms a turn. Reading query, key and value
with one product of the three weights stacked, and skipping the transformers module plumbing,
gives the same numbers (bit for bit in a test) in about three quarters of the time.

Training needs the transformers modules (dropout, gradients into each weight), so callers go
through `run_layers`, which uses the fused path only when no gradient is recorded and the
layers are in eval mode. The stacked weights are cached per layer and rebuilt when any of its
weights changes (a tensor's version counter moves on every in-place update, e.g. an optimiser
step), so a layer trained between two inference calls is never read stale.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class FusedLayer:
    """One BERT layer's weights, with query, key and value stacked into one matrix."""

    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    heads: int
    attention_out: Any
    """The attention's output projection (a `Linear`)."""
    attention_norm: Any
    intermediate: Any
    activation: Callable[[torch.Tensor], torch.Tensor]
    output: Any
    output_norm: Any

    @classmethod
    def of(cls, layer: Any) -> FusedLayer:
        """Read a transformers `BertLayer` (the stacked matrix is a copy; the rest is shared)."""
        import torch

        attention = layer.attention.self
        parts = (attention.query, attention.key, attention.value)
        return cls(
            qkv_weight=torch.cat([p.weight for p in parts]).detach(),
            qkv_bias=torch.cat([p.bias for p in parts]).detach(),
            heads=int(attention.num_attention_heads),
            attention_out=layer.attention.output.dense,
            attention_norm=layer.attention.output.LayerNorm,
            intermediate=layer.intermediate.dense,
            activation=layer.intermediate.intermediate_act_fn,
            output=layer.output.dense,
            output_norm=layer.output.LayerNorm,
        )

    def __call__(self, hidden: torch.Tensor, additive: torch.Tensor) -> torch.Tensor:
        """The layer's output token states; `additive` is the (batch, 1, 1, tokens) mask."""
        import torch.nn.functional as functional

        batch, tokens, width = hidden.shape
        qkv = functional.linear(hidden, self.qkv_weight, self.qkv_bias)
        q, k, v = qkv.view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = functional.scaled_dot_product_attention(q, k, v, attn_mask=additive)
        attended = attended.transpose(1, 2).reshape(batch, tokens, width)
        hidden = self.attention_norm(self.attention_out(attended) + hidden)
        out: torch.Tensor = self.output_norm(
            self.output(self.activation(self.intermediate(hidden))) + hidden
        )
        return out


_UNFUSED = contextvars.ContextVar("safeturn_unfused_layers", default=False)


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """Run every layer through the transformers modules in this block (the reference path)."""
    token = _UNFUSED.set(True)
    try:
        yield
    finally:
        _UNFUSED.reset(token)


_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], FusedLayer]] = (
    weakref.WeakKeyDictionary()
)


def _stamp(layer: Any) -> tuple[int, ...]:
    """What changes when the stacked weights must be rebuilt: storage and version counters.

    Tensors made under `torch.inference_mode` (a copy cast there) keep no version counter; they
    are never trained, so their storage alone identifies them.
    """
    attention = layer.attention.self
    tensors = [t for p in (attention.query, attention.key, attention.value) for t in p.parameters()]
    return tuple(x for t in tensors for x in (t.data_ptr(), -1 if t.is_inference() else t._version))


def fused(layer: Any) -> FusedLayer:
    """The fused view of `layer`, cached until one of its query/key/value weights changes."""
    stamp = _stamp(layer)
    cached = _CACHE.get(layer)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    view = FusedLayer.of(layer)
    _CACHE[layer] = (stamp, view)
    return view


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, 1, tokens): 0 where attended, the dtype's lowest value on padding."""
    import torch

    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def layer_states(
    layers: Iterable[Any], hidden: torch.Tensor, mask: torch.Tensor
) -> list[torch.Tensor]:
    """The input token states, then the states after each of BERT `layers`.

    Padding (mask 0) is hidden from attention. Uses `FusedLayer` when nothing needs a
    gradient and every layer is in eval mode; the transformers modules otherwise, and inside
    `unfused()`.
    """
    import torch

    layers = list(layers)
    additive = additive_mask(mask, hidden.dtype)
    fast = not (_UNFUSED.get() or torch.is_grad_enabled() or any(x.training for x in layers))
    states = [hidden]
    for layer in layers:
        if fast:
            hidden = fused(layer)(hidden, additive)
        else:
            out = layer(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        states.append(hidden)
    return states


def run_layers(layers: Iterable[Any], hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token states after BERT `layers` (see `layer_states`)."""
    return layer_states(layers, hidden, mask)[-1]
