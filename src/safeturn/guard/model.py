"""The fast stage's trained networks, evaluated in numpy: no torch at screening time.

**Harm** is scored by one small scorer g (an MLP over one text's vector) applied to each
*channel* of a turn: the turn's own text, the window of turns ending with it, and the text
read in its images. A text's vector is its sentence embedding followed, when the model has a
harm reader (`harm_encoder.py`), by the reader's logit: MiniLM's top layers fine-tuned on the
same task, which tells "kill a process" from "kill a person" where the frozen embedding cannot.
The turn's harm logit is the highest of its channels, and the dialogue's is the running
maximum over its turns. Sharing g across channels means text in an image is judged exactly
like typed text, and reading only the texts (no template cues, counts or lengths) leaves
little for a model to learn about *which dataset* a dialogue came from: on sources left out
of training it beats a network over the whole feature row (see `loso.py`). A harmless opening
cannot dilute a later request: the maximum only grows.

**Category and strategy** come from the network below, which reads the whole feature row.

Each turn's feature row goes through a ReLU layer to a hidden vector h_t. The conversation
after turn t is the concatenation of its `pools`: `last` (h_t), `max` (max over s <= t of h_s,
the most alarming evidence from any turn) and optionally `mean` (the overall drift). The
shipped model pools [last, max]: a mean lets harmless opening turns dilute a harmful request
that follows them, which is exactly how escalation attacks hide one. A second ReLU layer feeds
three heads: harm (one logit), category (one logit per canonical category) and strategy (one
per `STRATEGY_NAMES`). The pools are running max and sum, so `step` adds a turn in constant
time.
Harm is calibrated by Platt
scaling of the *running maximum* of the harm logit, fitted on the validation split: the
reported risk of a conversation never falls once a turn revealed harmful intent, and because
the Platt map is monotone, calibrating the maximum is the same as taking the maximum of the
calibrated per-turn risks. Weights ship as `.npz` (float16) with a `.json` of metadata beside,
and the harm reader's tuned layers as `.harm.safetensors` (`harm_path`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from safeturn.errors import PrerequisiteError
from safeturn.guard.features import FEATURE_RECIPE, FloatArray
from safeturn.guard.harm_encoder import HarmEncoder

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "data" / "moderator.npz"
"""The moderator shipped with safeturn; its metadata is `moderator.json` beside it."""
TRAIN_COMMAND = "safeturn guard train --data-root ../shared/data"
_ARRAYS = (
    "mean",
    "scale",
    "w1",
    "b1",
    "w2",
    "b2",
    "w_harm",
    "b_harm",
    "w_cat",
    "b_cat",
    "w_strat",
    "b_strat",
    "g_w1",
    "g_b1",
    "g_w2",
    "g_b2",
)
CHANNELS = 3
"""Embedding channels at the start of a feature row: text, window, image text."""
EMPTY_LOGIT = -12.0
"""The harm logit of a turn with no text in any channel (an image with nothing readable)."""
F64 = npt.NDArray[np.float64]
POOLS = ("last", "max", "mean")
"""The pools a model may concatenate, in this order."""


class HeadOutputs(NamedTuple):
    """Raw outputs for a batch of feature rows."""

    harm: npt.NDArray[np.float64]
    """Harm logits, shape (n,)."""
    category: npt.NDArray[np.float64]
    """Category probabilities, shape (n, categories)."""
    strategy: npt.NDArray[np.float64]
    """Strategy probabilities, shape (n, strategies)."""


@dataclass(frozen=True)
class ModeratorModel:
    """Weights, calibration and the labels of the category and strategy heads."""

    arrays: dict[str, FloatArray]
    platt: tuple[float, float]
    """(a, b): risk = sigmoid(a · running-max harm logit + b)."""
    categories: tuple[str, ...]
    strategies: tuple[str, ...]
    threshold: float
    band: tuple[float, float]
    """The uncertain band [lo, hi] in which the optional LLM stage is consulted."""
    metadata: dict[str, Any] = field(default_factory=dict)
    pools: tuple[str, ...] = ("last", "max")
    """Which of `POOLS` the second layer reads, in `POOLS` order."""
    harm: HarmEncoder | None = None
    """The fine-tuned harm reader whose logit ends each text's vector (`harm_encoder.py`);
    None for a model on plain embeddings. Saved beside the weights (`harm_path`)."""

    @property
    def input_dim(self) -> int:
        """The feature-row length the network expects."""
        return int(self.arrays["mean"].shape[0])

    def turn_hidden(self, rows: FloatArray) -> F64:
        """The per-turn hidden vectors h_t of feature rows of shape (n, d)."""
        a = self.arrays
        x = ((rows - a["mean"]) / a["scale"]).astype(np.float64)
        return np.maximum(x @ a["w1"].astype(np.float64) + a["b1"], 0.0)

    def heads(self, last: F64, pooled_max: F64, pooled_mean: F64) -> HeadOutputs:
        """Head outputs from the latest hidden vectors and the pools, each of shape (n, h)."""
        a = self.arrays
        available = {"last": last, "max": pooled_max, "mean": pooled_mean}
        joined = np.concatenate([available[name] for name in self.pools], axis=-1)
        z = np.maximum(joined @ a["w2"].astype(np.float64) + a["b2"], 0.0)
        harm = z @ a["w_harm"].astype(np.float64) + a["b_harm"]
        return HeadOutputs(
            harm=np.asarray(harm, dtype=np.float64).reshape(-1),
            category=_softmax(z @ a["w_cat"].astype(np.float64) + a["b_cat"]),
            strategy=_softmax(z @ a["w_strat"].astype(np.float64) + a["b_strat"]),
        )

    def turn_harm(self, rows: FloatArray) -> F64:
        """Each turn's harm logit: the scorer g on every non-empty channel, the highest."""
        a = self.arrays
        dim = a["g_w1"].shape[0]
        channels = rows[:, : CHANNELS * dim].reshape(len(rows), CHANNELS, dim).astype(np.float64)
        hidden = np.maximum(channels @ a["g_w1"].astype(np.float64) + a["g_b1"], 0.0)
        logits = (hidden @ a["g_w2"].astype(np.float64)).reshape(len(rows), CHANNELS)
        logits = logits + float(a["g_b2"].reshape(-1)[0])
        present = np.abs(channels).sum(axis=-1) > 0
        return np.asarray(
            np.where(present, logits, EMPTY_LOGIT).max(axis=1, initial=EMPTY_LOGIT),
            dtype=np.float64,
        )

    def forward_sequence(self, rows: FloatArray) -> HeadOutputs:
        """Outputs after every turn of one conversation, from its rows (turns, d) in order."""
        h = self.turn_hidden(rows)
        counts = np.arange(1, len(h) + 1, dtype=np.float64)[:, None]
        out = self.heads(h, np.maximum.accumulate(h, axis=0), np.cumsum(h, axis=0) / counts)
        return out._replace(harm=self.turn_harm(rows))

    def step(
        self, row: FloatArray, pool_max: F64 | None, pool_sum: F64 | None, turns: int
    ) -> tuple[HeadOutputs, F64, F64]:
        """Add one turn (its row; `turns` counts it) to the pools: outputs and the new pools."""
        h = self.turn_hidden(row[None, :])[0]
        new_max = h if pool_max is None else np.maximum(pool_max, h)
        new_sum = h if pool_sum is None else pool_sum + h
        out = self.heads(h[None, :], new_max[None, :], (new_sum / turns)[None, :])
        return out._replace(harm=self.turn_harm(row[None, :])), new_max, new_sum

    def calibrate(self, running_max_logit: float | npt.NDArray[np.float64]) -> Any:
        """Risk from the running-maximum harm logit (works on scalars and arrays)."""
        a, b = self.platt
        return 1.0 / (1.0 + np.exp(-(a * np.asarray(running_max_logit) + b)))

    def save(self, path: Path) -> None:
        """Write weights to `path` (`.npz`, float16) and metadata to `path.with_suffix('.json')`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            stored: dict[str, Any] = {k: self.arrays[k].astype(np.float16) for k in _ARRAYS}
            np.savez_compressed(fh, **stored)
        meta = {
            **self.metadata,
            "features": FEATURE_RECIPE,
            "platt": list(self.platt),
            "categories": list(self.categories),
            "strategies": list(self.strategies),
            "threshold": self.threshold,
            "band": list(self.band),
            "pools": list(self.pools),
        }
        meta.pop("harm_reader", None)
        if self.harm is not None:
            self.harm.save(harm_path(path))
            meta["harm_reader"] = harm_path(path).name
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def rounded(self) -> ModeratorModel:
        """This model with its weights rounded to float16, exactly as `save` stores them."""
        arrays = {k: v.astype(np.float16).astype(np.float32) for k, v in self.arrays.items()}
        return ModeratorModel(
            arrays,
            self.platt,
            self.categories,
            self.strategies,
            self.threshold,
            self.band,
            self.metadata,
            self.pools,
            None if self.harm is None else self.harm.rounded(),
        )

    @classmethod
    def load(cls, path: Path = DEFAULT_MODEL_PATH) -> ModeratorModel:
        """Read a model written by `save`.

        Raises:
            PrerequisiteError: Files missing, unreadable or trained on another feature recipe;
                the message names the command that trains one.
        """
        meta_path = path.with_suffix(".json")
        hint = f"train one with `{TRAIN_COMMAND} --out {path}`"
        if not path.is_file() or not meta_path.is_file():
            raise PrerequisiteError(f"moderator model not found at {path} (+ .json); {hint}")
        try:
            with np.load(path) as stored:
                arrays = {k: stored[k].astype(np.float32) for k in _ARRAYS}
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            platt = (float(meta["platt"][0]), float(meta["platt"][1]))
            band = (float(meta["band"][0]), float(meta["band"][1]))
            pools = tuple(str(p) for p in meta.get("pools", POOLS))
            if not pools or any(p not in POOLS for p in pools):
                raise ValueError(f"unknown pools {pools}; known: {POOLS}")
            harm = (
                HarmEncoder.load(path.parent / str(meta["harm_reader"]), hint)
                if meta.get("harm_reader")
                else None
            )
            model = cls(
                arrays,
                platt,
                tuple(str(c) for c in meta["categories"]),
                tuple(str(s) for s in meta["strategies"]),
                float(meta["threshold"]),
                band,
                meta,
                pools,
                harm,
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise PrerequisiteError(
                f"moderator model {path} is unreadable ({exc}); {hint}"
            ) from exc
        if meta.get("features") != FEATURE_RECIPE:
            raise PrerequisiteError(
                f"moderator model {path} was trained on other features "
                f"({meta.get('features')!r}, expected {FEATURE_RECIPE!r}); {hint}"
            )
        if arrays["w_cat"].shape[1] != len(model.categories) or arrays["w_strat"].shape[1] != len(
            model.strategies
        ):
            raise PrerequisiteError(f"moderator model {path}: head sizes do not match its labels")
        if arrays["w2"].shape[0] != len(model.pools) * arrays["w1"].shape[1]:
            raise PrerequisiteError(f"moderator model {path}: its layers do not match its pools")
        return model


def harm_path(path: Path) -> Path:
    """Where the harm reader of the model saved at `path` lives."""
    return path.with_suffix(".harm.safetensors")


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float64)
