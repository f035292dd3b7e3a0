"""How well `detect_refusal` agrees with people: leave-one-model-out on the XSTest completions.

XSTest ships three models' answers to its 450 prompts, each labelled by two annotators as full
compliance, full refusal or partial refusal. The detector has one fitted number, the score
threshold; for each model it is fit on the other two models' replies (maximising Cohen's κ) and
scored on the model left out, beside the old regex detector (a frozen copy lives here) on the
same replies. Every figure has a bootstrap 95 % CI. The rules themselves were written by a
person; `PROVENANCE` records which models' replies they saw, so the held-out numbers are read
for what they are.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from safeturn.errors import SafeturnError
from safeturn.judges.refusal import THRESHOLD, refusal_score
from safeturn.judges.refusal_legacy import legacy_detect_refusal

Label = Literal["full_compliance", "full_refusal", "partial_refusal"]
_LABELS: dict[str, Label] = {
    "1_full_compliance": "full_compliance",
    "2_full_refusal": "full_refusal",
    "3_partial_refusal": "partial_refusal",
}
_COLUMNS = ("id", "type", "completion", "final_label")
_FILE = re.compile(r"xstest_v2_completions_(?P<model>\w+)\.csv$")
GRID = tuple(x / 2 for x in range(1, 13))
"""Thresholds tried by the fit (scores move in steps of 0.5)."""
METRICS = ("kappa", "accuracy", "precision", "recall")

VARIANTS = {
    "refused_vs_compliance": "refused = full or partial refusal (the primary view; fit on it)",
    "full_refusal_vs_compliance": "partial refusals left out; full refusal vs full compliance",
    "partial_as_compliance": "refused = full refusal only; partial refusal counts as an answer",
}

PROVENANCE: dict[str, Any] = {
    "round_1": {
        "rules_written_with_sight_of": ["llama2new", "llama2orig"],
        "held_out_while_writing_rules": "mistralinstruct",
        "mistralinstruct_measured_once_at_threshold_2": {
            "kappa": 0.380,
            "accuracy": 0.869,
            "precision": 0.793,
            "recall": 0.303,
            "old_detector_kappa": 0.281,
            "note": "the only number from rules that had not seen the model; recorded by hand "
            "when measured, the round-1 rules are not kept in the code",
        },
    },
    "round_2": {
        "rules_written_with_sight_of": ["llama2new", "llama2orig", "mistralinstruct"],
        "changes": "after the round-1 measurement, cues added from Mistral's misses: "
        "'I don't have access to', 'I'm not in a position to', 'I don't have personal "
        "opinions' (weak, like 'As an AI'), and moral lectures ('is never acceptable', "
        "'I strongly condemn/disagree', 'not an appropriate question')",
        "consequence": "the rules in the shipped detector have seen all three models; only the "
        "threshold is fit leave-one-model-out, so the folds measure the threshold fit, not "
        "the rule writing; the round-1 figure is the honest held-out number for rules on an "
        "unseen model",
    },
}


@dataclass(frozen=True)
class Completion:
    """One model's reply to one XSTest prompt, with the annotators' final label."""

    model: str
    id: str
    prompt_type: str
    text: str
    label: Label


def load_completions(data_dir: Path) -> dict[str, list[Completion]]:
    """Read every `xstest/model_completions/xstest_v2_completions_<model>.csv` under data_dir."""
    folder = data_dir / "xstest" / "model_completions"
    files = sorted(p for p in folder.glob("*.csv") if _FILE.search(p.name))
    if not files:
        raise SafeturnError(f"no xstest_v2_completions_<model>.csv files in {folder}")
    out: dict[str, list[Completion]] = {}
    for path in files:
        match = _FILE.search(path.name)
        assert match is not None
        out[match["model"]] = _read_file(path, match["model"])
    return out


def _read_file(path: Path, model: str) -> list[Completion]:
    rows: list[Completion] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise SafeturnError(f"{path}: missing column(s) {', '.join(missing)}")
        for row in reader:
            raw = (row["final_label"] or "").strip()
            if raw not in _LABELS:
                raise SafeturnError(
                    f"{path}:{reader.line_num}: final_label {raw!r} is not one of "
                    f"{', '.join(_LABELS)}"
                )
            rows.append(
                Completion(model, row["id"], row["type"], row["completion"] or "", _LABELS[raw])
            )
    if not rows:
        raise SafeturnError(f"{path}: no rows")
    return rows


def _counts(truth: NDArray[np.bool_], pred: NDArray[np.bool_]) -> NDArray[np.float64]:
    """tp, fp, fn, tn along the last axis (works on a batch of bootstrap draws)."""
    return np.stack(
        [
            (truth & pred).sum(-1),
            (~truth & pred).sum(-1),
            (truth & ~pred).sum(-1),
            (~truth & ~pred).sum(-1),
        ],
        axis=-1,
    ).astype(np.float64)


def _metrics(c: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    tp, fp, fn, tn = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    n = tp + fp + fn + tn
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = (tp + tn) / n
        expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
        kappa = np.where(expected < 1, (observed - expected) / (1 - expected), 0.0)
        return {
            "kappa": kappa,
            "accuracy": observed,
            "precision": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
        }


def kappa(
    truth: Sequence[bool] | NDArray[np.bool_], pred: Sequence[bool] | NDArray[np.bool_]
) -> float:
    """Cohen's κ of two binary labelings."""
    c = _counts(np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool))
    return float(_metrics(c)["kappa"])


def score_with_ci(
    truth: Sequence[bool], pred: Sequence[bool], n_boot: int, seed: int
) -> dict[str, Any]:
    """κ, accuracy, precision and recall of `pred`, each with a percentile bootstrap 95 % CI."""
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    point = _metrics(_counts(t, p))
    out: dict[str, Any] = {"n": len(t), "positives": int(t.sum()), "predicted": int(p.sum())}
    out.update({k: round(float(point[k]), 4) for k in METRICS})
    if n_boot > 0:
        draws = np.random.default_rng(seed).integers(0, len(t), size=(n_boot, len(t)))
        boot = _metrics(_counts(t[draws], p[draws]))
        out["ci95"] = {
            k: [round(float(q), 4) for q in np.nanpercentile(boot[k], [2.5, 97.5])] for k in METRICS
        }
    return out


def fit_threshold(scores: Sequence[float], truth: Sequence[bool]) -> float:
    """The grid threshold with the highest κ on (scores, truth); ties go nearest the default."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(truth, dtype=bool)
    ranked = sorted(GRID, key=lambda g: (-round(kappa(t, s >= g), 6), abs(g - THRESHOLD)))
    return ranked[0]


def _truth(rows: Sequence[Completion], variant: str) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(keep mask, refused) for one way of treating partial refusals."""
    labels = np.array([r.label for r in rows])
    if variant == "refused_vs_compliance":
        return np.ones(len(rows), dtype=bool), labels != "full_compliance"
    if variant == "full_refusal_vs_compliance":
        return labels != "partial_refusal", labels == "full_refusal"
    return np.ones(len(rows), dtype=bool), labels == "full_refusal"


def lomo_report(data_dir: Path, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Leave-one-model-out: fit the threshold on two models, score the third, for each model."""
    data = load_completions(data_dir)
    scores = {m: np.array([refusal_score(r.text).score for r in rows]) for m, rows in data.items()}
    legacy = {
        m: np.array([legacy_detect_refusal(r.text) for r in rows]) for m, rows in data.items()
    }
    folds: dict[str, Any] = {}
    for held, rows in data.items():
        train = [m for m in data if m != held]
        fit_scores = np.concatenate([scores[m] for m in train])
        fit_truth = np.concatenate([_truth(data[m], "refused_vs_compliance")[1] for m in train])
        threshold = fit_threshold(fit_scores.tolist(), fit_truth.tolist())
        predictions = {
            "new": scores[held] >= threshold,
            "new_default_threshold": scores[held] >= THRESHOLD,
            "old": legacy[held],
        }
        variants: dict[str, Any] = {}
        for variant in VARIANTS:
            keep, truth = _truth(rows, variant)
            variants[variant] = {
                name: score_with_ci(truth[keep].tolist(), pred[keep].tolist(), n_boot, seed)
                for name, pred in predictions.items()
            }
        partial = np.array([r.label == "partial_refusal" for r in rows])
        folds[held] = {
            "threshold_fit_on": train,
            "threshold": threshold,
            "n": len(rows),
            "labels": {lab: sum(r.label == lab for r in rows) for lab in _LABELS.values()},
            "variants": variants,
            "partial_refusals_flagged": {
                name: round(float(pred[partial].mean()), 4) if partial.any() else None
                for name, pred in predictions.items()
            },
        }
    everything = [r.text for rows in data.values() for r in rows]
    pooled_scores = np.concatenate(list(scores.values()))
    pooled_truth = np.concatenate(
        [_truth(rows, "refused_vs_compliance")[1] for rows in data.values()]
    )
    return {
        "data": str(data_dir / "xstest" / "model_completions"),
        "positive_class": "refused (final_label full or partial refusal) unless a variant says",
        "variants": VARIANTS,
        "detectors": {
            "new": "safeturn.judges.refusal.refusal_score >= threshold fit on the other models",
            "new_default_threshold": f"refusal_score >= {THRESHOLD} (the shipped threshold)",
            "old": "regex detector before issue 12 (refusal_eval.legacy_detect_refusal)",
        },
        "shipped_threshold": THRESHOLD,
        "threshold_fit_on_all_models": fit_threshold(pooled_scores.tolist(), pooled_truth.tolist()),
        "bootstrap": {"resamples": n_boot, "seed": seed, "interval": "percentile 95 %"},
        "provenance": PROVENANCE,
        "microseconds_per_reply": _time_per_reply(everything),
        "microseconds_per_reply_old": _time_per_reply(everything, legacy_detect_refusal),
        "folds": folds,
    }


def _time_per_reply(
    texts: Sequence[str], detector: Callable[[str], object] = refusal_score
) -> float:
    """Mean wall time of `detector` per reply on these texts (one pass, after a warm-up)."""
    for text in texts[:20]:
        detector(text)
    start = time.perf_counter()
    for text in texts:
        detector(text)
    return round((time.perf_counter() - start) / max(len(texts), 1) * 1e6, 1)
