"""Train the `classifier` judge's head on real, labelled model responses, read in place.

JailbreakBench records with a non-null response count as harmful when `jailbroken`; XSTest
completions when the prompt is unsafe and the human label is full compliance. Pairs are
deduplicated and split by behavior / prompt (never by row) into train, validation and test
with a fixed seed; L2 strength and threshold are chosen on validation, metrics are on test.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from safeturn.data.base import read_json
from safeturn.errors import PrerequisiteError
from safeturn.judges.classifier import DEFAULT_HEAD_PATH, fit_head, pair_features
from safeturn.judges.embedder import EMBEDDER_PIN
from safeturn.metrics.roc import auroc

SPLITS = ("train", "validation", "test")
CUTS = (0.6, 0.8)  # cumulative group fractions: 60 % train, 20 % validation, 20 % test
L2_GRID = (1.0, 10.0, 30.0, 100.0, 300.0, 1000.0)  # penalty l2·|w|²/2n; validation picks one
SOURCES = {
    "jailbreakbench": "JailbreakBench/artifacts @ 909e68c (MIT), judge label `jailbroken`",
    "xstest": "paul-rottger/exaggerated-safety @ d7bb5bd (CC BY 4.0), human `final_label`",
}
Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Example:
    """One labelled (request, response) pair; `group` is the unit the splits respect."""

    group: str
    request: str
    response: str
    harmful: bool
    source: str


def _jbb_records(node: Any, key: str) -> Iterator[tuple[str, str | None, str, str, bool]]:
    """Yield (behavior, goal, prompt, response, jailbroken) from any JSON nesting."""
    if isinstance(node, dict):
        response, label = node.get("response"), node.get("jailbroken")
        if isinstance(node.get("prompt"), str) and isinstance(label, bool):
            if isinstance(response, str) and response.strip():
                behavior = _norm(str(node.get("behavior") or key))
                yield behavior, node.get("goal"), node["prompt"], response, label
            return
        for child_key, child in node.items():
            yield from _jbb_records(child, str(child_key))
    elif isinstance(node, list):
        for child in node:
            yield from _jbb_records(child, key)


def _norm(behavior: str) -> str:
    """One key per behavior: files spell some apart ("9/11" vs "9_11", doubled spaces)."""
    return re.sub(r"[^a-z0-9]+", " ", behavior.lower()).strip()


def load_jailbreakbench(root: Path) -> list[Example]:
    """Every labelled, non-null response under `root`, asked as its behavior's goal.

    Records sharing a behavior name or a goal form one group (files spell some apart).
    """
    records: list[tuple[str, str | None, str, str, bool]] = []
    for path in sorted(root.rglob("*.json")):
        records += _jbb_records(read_json(path), "")
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    goals: dict[str, str] = {}
    for behavior, goal, *_ in records:
        if isinstance(goal, str):
            goals.setdefault(behavior, goal)
            parent[find(f"goal:{_norm(goal)}")] = find(behavior)
    return [
        Example(f"jbb:{find(b)}", goal or goals.get(b, prompt), response, label, "jailbreakbench")
        for b, goal, prompt, response, label in records
    ]


def load_xstest(root: Path) -> list[Example]:
    """XSTest completions: harmful = unsafe prompt and human label full compliance."""
    with (root / "xstest_prompts.csv").open(encoding="utf-8", newline="") as fh:
        unsafe = {row["id"]: row["label"] == "unsafe" for row in csv.DictReader(fh)}
    examples = []
    for path in sorted((root / "model_completions").glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                pid = row["id"].removeprefix("v2-")
                complied = row["final_label"].strip() == "1_full_compliance"
                harmful = unsafe.get(pid, row["type"].startswith("contrast")) and complied
                examples.append(
                    Example(f"xstest:{pid}", row["prompt"], row["completion"], harmful, "xstest")
                )
    return examples


def load_examples(data_dir: Path) -> tuple[list[Example], int]:
    """All examples, deduplicated by (group, response); returns (examples, duplicates dropped).

    Pairs seen with both labels are dropped too (counted as duplicates).
    """
    found: list[Example] = []
    if (data_dir / "jailbreakbench").is_dir():
        found += load_jailbreakbench(data_dir / "jailbreakbench")
    if (data_dir / "xstest" / "xstest_prompts.csv").is_file():
        found += load_xstest(data_dir / "xstest")
    if not found:
        raise PrerequisiteError(f"no jailbreakbench/ or xstest/ training data under {data_dir}")
    labels: dict[tuple[str, str], set[bool]] = {}
    first: dict[tuple[str, str], Example] = {}
    for ex in found:
        labels.setdefault(key := (ex.group, ex.response.strip()), set()).add(ex.harmful)
        first.setdefault(key, ex)
    kept = [ex for key, ex in first.items() if len(labels[key]) == 1]
    return kept, len(found) - len(kept)


def split_by_group(
    examples: list[Example], seed: int, max_examples: int | None = None
) -> dict[str, list[Example]]:
    """Shuffle each source's groups with `seed` and cut them 60/20/20; groups never straddle.

    With `max_examples`, whole groups are first taken round-robin across sources until at
    least that many examples are in, and only those are split.
    """
    rng = np.random.default_rng(seed)
    sizes: dict[str, int] = {}
    by_source: dict[str, dict[str, None]] = {}
    for ex in examples:
        by_source.setdefault(ex.source, {})[ex.group] = None
        sizes[ex.group] = sizes.get(ex.group, 0) + 1
    shuffled = [[list(gs)[i] for i in rng.permutation(len(gs))] for gs in by_source.values()]
    if max_examples is not None:
        taken: set[str] = set()
        for g in (g for row in zip(*shuffled, strict=False) for g in row):
            if sum(sizes[t] for t in taken) >= max_examples:
                break
            taken.add(g)
        shuffled = [[g for g in groups if g in taken] for groups in shuffled]
    split_of = {
        g: SPLITS[sum(i >= c * len(groups) for c in CUTS)]
        for groups in shuffled
        for i, g in enumerate(groups)
    }
    return {n: [ex for ex in examples if split_of.get(ex.group) == n] for n in SPLITS}


def binary_metrics(y: Array, p: Array, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall, F1, ROC AUC and the majority baseline at `threshold`."""
    truth, pred = y > 0.5, p >= threshold
    tp, fp, fn = (float(np.sum(a & b)) for a, b in ((pred, truth), (pred, ~truth), (~pred, truth)))
    n, pos = len(y), float(truth.sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    auc = auroc(truth, p)
    return {
        "n": float(n),
        "harmful": pos,
        "accuracy": float(np.mean(pred == truth)) if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "roc_auc": 0.0 if auc is None else auc,
        "majority_baseline": max(pos, n - pos) / n if n else 0.0,
    }


def best_threshold(y: Array, p: Array) -> float:
    """The threshold maximising F1 (then accuracy) on (y, p); 0.5 with no positive in y."""
    if not np.any(y > 0.5):
        return 0.5
    scored = [(binary_metrics(y, p, t), t) for t in np.unique(p)]
    return float(max(scored, key=lambda mt: (mt[0]["f1"], mt[0]["accuracy"], -mt[1]))[1])


def main(
    data_dir: Path, out: Path = DEFAULT_HEAD_PATH, seed: int = 0, max_examples: int | None = None
) -> dict[str, float]:
    """Train, select on validation, evaluate on test, write the head and its metadata.

    Args:
        data_dir: The folder holding `jailbreakbench/` and `xstest/`.
        out: The head's `.npz` path; the metadata goes beside it as `.json`.
        seed: Seeds the group split (training itself is deterministic).
        max_examples: Use only this many examples (whole groups first), for quick runs.

    Returns:
        The test-split metrics, plus the chosen `threshold` and `l2`.

    Raises:
        PrerequisiteError: No training data, or the sentence encoder is missing.
    """
    examples, duplicates = load_examples(data_dir)
    splits = split_by_group(examples, seed, max_examples)
    if not splits["train"]:
        raise PrerequisiteError(f"no training examples left under {data_dir}")
    feats, ys = {}, {}
    for name, part in splits.items():
        feats[name] = pair_features([e.request for e in part], [e.response for e in part])
        ys[name] = np.array([e.harmful for e in part], dtype=np.float64)
    tune = "validation" if len(ys["validation"]) else "train"
    fits = {l2: fit_head(feats["train"], ys["train"], l2) for l2 in L2_GRID}
    probs = {l2: head.predict_proba(feats[tune]) for l2, head in fits.items()}
    truth = ys[tune] > 0.5
    loss = {c: -np.log(np.where(truth, p, 1 - p) + 1e-9).mean() for c, p in probs.items()}
    l2 = min(L2_GRID, key=loss.__getitem__)  # the best validation log-loss
    threshold = best_threshold(ys[tune], probs[l2])
    probs_of = {name: fits[l2].predict_proba(feats[name]) for name in SPLITS}
    report = {name: binary_metrics(ys[name], probs_of[name], threshold) for name in SPLITS}
    test_sources = np.array([e.source for e in splits["test"]])
    by_source = {
        source: binary_metrics(ys["test"][mask], probs_of["test"][mask], threshold)
        for source in SOURCES
        if (mask := test_sources == source).any()
    }
    metadata = {
        "model": f"logistic regression (L-BFGS, L2) on standardised features; {EMBEDDER_PIN}",
        "l2": l2,
        "threshold_rule": f"max F1 on the {tune} split",
        "seed": seed,
        "trained_on": dt.date.today().isoformat(),
        "sources": SOURCES,
        "duplicates_dropped": duplicates,
        "max_examples": max_examples,
        "groups": {k: len({e.group for e in v}) for k, v in splits.items()},
        "metrics": report,
        "test_by_source": by_source,
    }
    replace(fits[l2], threshold=threshold, metadata=metadata).save(out)
    return {**report["test"], "threshold": threshold, "l2": l2}
