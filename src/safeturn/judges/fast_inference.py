"""Faster CPU inference for the small encoders behind the embedded judges and the guard.

Measured on this project's 2-core Xeon (AMX + AVX512-BF16; `benchmarks/judge_throughput.py
--embed`), all-MiniLM-L6-v2 over real replies (median ≈140 tokens) runs about 3x faster with
its weights in bfloat16 than in float32, and the sentence vectors stay within cosine 0.9999 of
the float32 ones. The options that did not earn their place: int8 dynamic quantization (torch's
`quantize_dynamic` or ONNX Runtime's) is only 1.2-1.3x faster and drifts to cosine 0.87-0.98 on
some replies; ONNX Runtime in float32 is no faster than torch and would need the `onnx` package
to export. On a CPU without native bfloat16 arithmetic bfloat16 is *slower*, so the default
("auto") keeps float32 there.

`SAFETURN_INFERENCE_PRECISION=fp32` selects the float32 reference path everywhere.

Threads: a judge's forward passes run in a worker thread beside the event loop that drives the
model calls. With torch's default pool (one thread per core) the two fight for the cores, and
on a loaded machine OpenMP's spinning threads waste several times the useful CPU. In the eval
harness on 2 cores one torch thread gave 5-50 % more calls/s and less CPU per judged turn than
two, so `inference_threads` leaves one core to the rest of the process
(`SAFETURN_INFERENCE_THREADS=N` overrides).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar, cast, get_args

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "bf16"]
"""The dtype the encoder's weights and activations run in."""
PRECISION_ENV = "SAFETURN_INFERENCE_PRECISION"
"""`auto` (default: bf16 where the CPU has native bf16, else fp32), `bf16` or `fp32`."""
THREADS_ENV = "SAFETURN_INFERENCE_THREADS"
"""`auto` (default: all cores but one, never more than torch's current setting) or a count."""

M = TypeVar("M", bound="torch.nn.Module")


def bf16_native() -> bool:
    """True when the CPU has native bfloat16 matrix arithmetic (AMX tiles or AVX512-BF16)."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def inference_precision(requested: str | None = None) -> Precision:
    """Resolve a precision: the argument, else `$SAFETURN_INFERENCE_PRECISION`, else `auto`.

    Raises:
        ValueError: The value is not `auto`, `bf16` or `fp32` (the message names its origin).
    """
    origin = "precision" if requested is not None else PRECISION_ENV
    value = (requested if requested is not None else os.environ.get(PRECISION_ENV, "auto")) or ""
    value = value.strip().lower() or "auto"
    if value == "auto":
        return "bf16" if bf16_native() else "fp32"
    if value not in get_args(Precision):
        raise ValueError(f"{origin}={value!r}: expected one of auto, bf16, fp32")
    return cast("Precision", value)


def inference_threads() -> int:
    """Torch threads for a forward pass: `$SAFETURN_INFERENCE_THREADS`, else `auto`.

    `auto` is all cores but one (at least one), and never more than the calling thread's
    current torch setting, so a caller that chose fewer (the guard's one-thread screening
    worker) keeps its choice.

    Raises:
        ValueError: The variable is neither `auto` nor a positive integer.
    """
    import torch

    raw = os.environ.get(THREADS_ENV, "").strip().lower()
    if raw in ("", "auto"):
        return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{THREADS_ENV}={raw!r}: expected auto or a positive integer")
    return int(raw)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch intra-op threads, then restore the previous setting.

    The setting is per calling thread with torch's OpenMP backend, so set it in the thread
    that runs the forward passes (e.g. inside a micro-batcher's batch function).
    """
    import torch

    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count != previous:
            torch.set_num_threads(previous)


def torch_dtype(precision: Precision) -> torch.dtype:
    """The torch dtype of a precision."""
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def fast_inference_model(
    model: M, *, precision: str | None = None, threads: int | None = None
) -> M:
    """Prepare a torch module for fast CPU inference, in place, and return it.

    Puts it in eval mode without gradients and casts it to the resolved precision (see
    `inference_precision`). Callers feed it the usual inputs (token ids and masks are not cast)
    and should cast its outputs back with `.float()` before pooling or a head in float32.

    Args:
        model: Any `torch.nn.Module`, e.g. a transformers `BertModel` or a cross-encoder.
        precision: `auto`, `bf16` or `fp32`; None reads `$SAFETURN_INFERENCE_PRECISION`.
        threads: If given, `torch.set_num_threads(threads)` (process-wide for torch's
            intra-op pool; 2 threads gave 1.6x the texts/s of 1 on 2 cores, at ~10 % more CPU
            per text). None leaves the setting alone.

    Returns:
        The same module, converted.

    Raises:
        ValueError: Unknown precision, or `threads` < 1.

    Examples:
        >>> import torch
        >>> layer = fast_inference_model(torch.nn.Linear(4, 2), precision="fp32")
        >>> layer.weight.dtype, layer.training, layer.weight.requires_grad
        (torch.float32, False, False)
    """
    import torch

    resolved = inference_precision(precision)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads}: expected at least 1")
        torch.set_num_threads(threads)
    model.eval()
    model.requires_grad_(False)
    model.to(torch_dtype(resolved))
    return model


def length_buckets(
    lengths: Sequence[int], *, batch_size: int, token_budget: int
) -> list[list[int]]:
    """Group items into forward passes by length, so padding (wasted compute) stays small.

    Items are sorted by length and cut into consecutive groups of at most `batch_size` items
    whose padded size (items x longest length) stays within `token_budget`; a single item
    longer than the budget gets a group of its own. On real replies (median ≈140 tokens) a
    2,048-token budget ran ~1.5x faster than fixed batches of 32, which pad every short reply
    up to the longest one.

    Args:
        lengths: Token count of each item (after truncation).
        batch_size: Most items per group.
        token_budget: Most padded tokens per group.

    Returns:
        Lists of indices into `lengths`; every index appears exactly once.

    Examples:
        >>> length_buckets([5, 100, 7, 90], batch_size=8, token_budget=200)
        [[0, 2], [3, 1]]
    """
    if batch_size < 1 or token_budget < 1:
        raise ValueError(
            f"batch_size and token_budget must be >= 1; got {batch_size}, {token_budget}"
        )
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:  # ascending, so `index` is the longest of its group so far
        grown = len(current) + 1
        if current and (grown > batch_size or grown * lengths[index] > token_budget):
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups
