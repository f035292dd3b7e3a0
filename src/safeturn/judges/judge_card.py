"""The validation card of `classifier-v2`, written from its leave-one-source-out folds.

The card has the shape `safeturn judge validate --json` writes (`judges.card` reads both), so
reports show the shipped judge's figure the same way as a user's own validation run:
`overall` pools every held-out reply (each scored by the fold that never saw its source, at
that fold's threshold); `by_source` is each fold's own figure. For families with one class
(all safe), κ and AUC are against the unsafe test replies of the sources the fold trained on,
and `false_unsafe_rate` is the share of their own replies called unsafe; hh-rlhf has only
preference pairs, so it reports pairwise agreement and the AUC of rejected over chosen.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from safeturn.judges.judge_thresholds import decision_metrics

DEFAULT_CARD = Path(__file__).resolve().parent / "data" / "cards" / "classifier-v2.json"
COMMAND = "safeturn judge train --data-dir ../shared/data"
_KEYS = ("n", "positive_rate", "accuracy", "precision", "recall", "f1", "auc", "kappa")


def _view(fold: Mapping[str, Any]) -> dict[str, Any]:
    if "pairwise_agreement" in fold:
        return {
            "n": 2 * int(fold["n_pairs"]),
            "auc": fold["auc_rejected_vs_chosen"],
            "kappa": None,
            "pairwise_agreement": fold["pairwise_agreement"],
            "note": "preference pairs only: AUC of the rejected over the chosen reply",
        }
    view = dict(fold.get("vs_rest", fold))
    out = {key: view.get(key) for key in _KEYS}
    out["false_unsafe_rate"] = fold.get("false_unsafe_rate")
    if "vs_rest" in fold:
        out["note"] = "all safe: κ and AUC against other sources' unsafe test replies"
    if "by_model" in fold:
        out["by_model"] = {m: {k: v.get(k) for k in _KEYS} for m, v in fold["by_model"].items()}
    return out


def card(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The card of a trained judge's metadata (see the module docstring)."""
    folds: Mapping[str, Any] = metadata.get("leave_one_source_out", {})
    truth: list[bool] = []
    scores: list[float] = []
    predicted: list[bool] = []
    for fold in folds.values():
        pooled = fold.get("pooled")
        if pooled:
            truth += pooled["truth"]
            scores += pooled["scores"]
            predicted += pooled["predicted"]
    overall: dict[str, Any] = {}
    if truth:
        # each reply was decided at its own fold's threshold: pool the decisions themselves
        overall = decision_metrics(np.array(truth), np.array(predicted), np.array(scores))
    return {
        "judge": "classifier-v2",
        "data": "../shared/data: " + ", ".join(folds) if folds else "none",
        "method": "leave-one-source-out",
        "overall": overall,
        "by_source": {family: _view(fold) for family, fold in folds.items()},
        "in_distribution_test": {
            family: _view(fold) for family, fold in metadata.get("in_distribution_test", {}).items()
        },
        "command": COMMAND,
        "trained_on": metadata.get("trained_on"),
    }


def write_card(metadata: Mapping[str, Any], path: Path = DEFAULT_CARD) -> None:
    """Write the card of `metadata` as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card(metadata), indent=2) + "\n", encoding="utf-8")


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def fold_rows(folds: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """(held out, n, κ, AUC, false-unsafe, note) per fold, for a table."""
    rows: list[tuple[str, ...]] = []
    for family, fold in folds.items():
        view = _view(fold)
        note = view.get("note", "")
        if "pairwise_agreement" in view:
            note = f"pairwise agreement {_fmt(view['pairwise_agreement'])}"
        rows.append(
            (
                family,
                _fmt(view.get("n")),
                _fmt(view.get("kappa")),
                _fmt(view.get("auc")),
                _fmt(view.get("false_unsafe_rate")),
                str(note),
            )
        )
    return rows
