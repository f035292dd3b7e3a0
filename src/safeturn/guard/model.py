"""The fast stage's trained network, evaluated in numpy: no torch at screening time.

Each turn's feature row goes through a ReLU layer to a hidden vector h_t. The conversation
after turn t is [h_t, max over s <= t of h_s, mean over s <= t of h_s]: the latest turn, the
most alarming evidence from any turn, and the overall drift. A second ReLU layer feeds three
heads: harm (one logit), category (one logit per canonical category) and strategy (one per
`STRATEGY_NAMES`). The pools are running max and sum, so `step` adds a turn in constant time.
Harm is calibrated by Platt
scaling of the *running maximum* of the harm logit, fitted on the validation split: the
reported risk of a conversation never falls once a turn revealed harmful intent, and because
the Platt map is monotone, calibrating the maximum is the same as taking the maximum of the
calibrated per-turn risks. Weights ship as `.npz` (float16) with a `.json` of metadata beside.
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
)
F64 = npt.NDArray[np.float64]


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
        joined = np.concatenate([last, pooled_max, pooled_mean], axis=-1)
        z = np.maximum(joined @ a["w2"].astype(np.float64) + a["b2"], 0.0)
        harm = z @ a["w_harm"].astype(np.float64) + a["b_harm"]
        return HeadOutputs(
            harm=np.asarray(harm, dtype=np.float64).reshape(-1),
            category=_softmax(z @ a["w_cat"].astype(np.float64) + a["b_cat"]),
            strategy=_softmax(z @ a["w_strat"].astype(np.float64) + a["b_strat"]),
        )

    def forward_sequence(self, rows: FloatArray) -> HeadOutputs:
        """Outputs after every turn of one conversation, from its rows (turns, d) in order."""
        h = self.turn_hidden(rows)
        counts = np.arange(1, len(h) + 1, dtype=np.float64)[:, None]
        return self.heads(h, np.maximum.accumulate(h, axis=0), np.cumsum(h, axis=0) / counts)

    def step(
        self, row: FloatArray, pool_max: F64 | None, pool_sum: F64 | None, turns: int
    ) -> tuple[HeadOutputs, F64, F64]:
        """Add one turn (its row; `turns` counts it) to the pools: outputs and the new pools."""
        h = self.turn_hidden(row[None, :])[0]
        new_max = h if pool_max is None else np.maximum(pool_max, h)
        new_sum = h if pool_sum is None else pool_sum + h
        out = self.heads(h[None, :], new_max[None, :], (new_sum / turns)[None, :])
        return out, new_max, new_sum

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
        }
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
            model = cls(
                arrays,
                platt,
                tuple(str(c) for c in meta["categories"]),
                tuple(str(s) for s in meta["strategies"]),
                float(meta["threshold"]),
                band,
                meta,
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
        return model


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float64)
