"""Train the moderator's fast stage: `safeturn guard train --data-root ../shared/data`.

Steps: draw and build the dialogues (`dataset.py`), prime the caches and read every dialogue
into per-prefix feature rows through the same `ConversationState` the moderator uses
(`train_rows.py`), fit the network and the harm scorer (`train_fit.py`: torch, AdamW, early
stopping on the validation loss), round them to float16 as they will be stored, calibrate the
running-max harm logit by Platt scaling on validation and pick the threshold that flags at most
5 % of the benign validation dialogues of *each* benign source (`train_calibrate.py`), evaluate
on the test seeds, and save the model with its metadata (data counts, plan, seeds, timings,
metrics, the per-source validation rates). The settings are `ModeratorTrainConfig`
(`train_config.py`); `leave_out` drops whole sources from every split: `loso.py` uses it to
measure how the model does on a source it never saw.

This module is the driver; every name the training modules define is importable from here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from safeturn.errors import PrerequisiteError
from safeturn.guard.cache import CachedEncoder
from safeturn.guard.dataset import SPLITS, GuardExample, Split, counts
from safeturn.guard.evaluate import evaluate_examples
from safeturn.guard.features import feature_dim
from safeturn.guard.images import ImageAnalyzer
from safeturn.guard.model import ModeratorModel
from safeturn.guard.moderator import DialogueModerator
from safeturn.guard.reader import DialogueReader, Progress
from safeturn.guard.train_calibrate import fit_model, fit_platt, source_thresholds
from safeturn.guard.train_config import CATEGORIES, LABEL_RULE, ModeratorTrainConfig
from safeturn.guard.train_fit import fit_network, fit_scorer
from safeturn.guard.train_harm import row_texts, score_texts, scored_encoder
from safeturn.guard.train_rows import (
    Prepared,
    Rows,
    dialogue_scores,
    featurize,
    prepare,
    running_max_logits,
    take,
)
from safeturn.judges.embedder import EMBEDDER_PIN

__all__ = [
    "CATEGORIES",
    "LABEL_RULE",
    "Evaluator",
    "ModeratorTrainConfig",
    "Prepared",
    "Rows",
    "dialogue_scores",
    "featurize",
    "fit_model",
    "fit_network",
    "fit_platt",
    "fit_scorer",
    "prepare",
    "running_max_logits",
    "source_thresholds",
    "take",
    "train",
]

Evaluator = Callable[[ModeratorModel, list[GuardExample]], dict[str, Any]]
"""Computes the test metrics of a trained model on the test dialogues."""


def train(
    config: ModeratorTrainConfig,
    *,
    progress: Progress | None = None,
    encoder: CachedEncoder | None = None,
    analyzer: ImageAnalyzer | None = None,
    evaluator: Evaluator | None = None,
) -> ModeratorModel:
    """Run the whole training (see the module docstring) and save the model to `config.out`.

    Args:
        config: The run's settings.
        progress: Called while images and texts are processed.
        encoder: Text encoder with cache (default: MiniLM, unbounded cache).
        analyzer: Image analyzer (default: OCR bridge; NudeNet is not a learned feature).
        evaluator: Computes the test metrics (default: `evaluate_examples` on a moderator
            sharing these caches).

    Returns:
        The saved model.

    Raises:
        PrerequisiteError: The data is missing, or a split came out empty.
    """
    prepared = prepare(config, progress=progress, encoder=encoder, analyzer=analyzer)
    timings = prepared.timings
    by_split, rows = _splits(prepared)
    clock = time.perf_counter()
    model, validation = fit_model(
        rows["train"],
        by_split["train"],
        rows["validation"],
        by_split["validation"],
        config,
        prepared.states,
    )
    timings["fit_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    reader = DialogueReader(_test_encoder(model, prepared, rows["test"]), prepared.reader.images)
    test = _test_metrics(model, reader, by_split["test"], evaluator)
    timings["test_s"] = time.perf_counter() - clock
    metadata = _metadata(config, model, prepared, rows, validation, test)
    model = dataclasses.replace(model, metadata=metadata)
    model.save(config.out)
    return model


def _splits(prepared: Prepared) -> tuple[dict[Split, list[GuardExample]], dict[Split, Rows]]:
    """The examples and rows of each split.

    Raises:
        PrerequisiteError: A split lacks harmful or benign dialogues.
    """
    examples = prepared.examples
    index = {s: [i for i, e in enumerate(examples) if e.split == s] for s in SPLITS}
    by_split = {s: [examples[i] for i in keep] for s, keep in index.items()}
    for name, part in by_split.items():
        if not part or all(e.harmful for e in part) or not any(e.harmful for e in part):
            raise PrerequisiteError(f"the {name} split has no harmful/benign mix; add seeds")
    rows = {name: take(prepared.rows, keep) for name, keep in index.items()}
    return by_split, rows


def _test_encoder(model: ModeratorModel, prepared: Prepared, test: Rows) -> CachedEncoder:
    """The training cache, with the trained harm reader's logits in it when there is one."""
    if model.harm is None or prepared.states is None:
        return prepared.reader.encoder
    logits = score_texts(model.harm, row_texts(test), prepared.states)
    return scored_encoder(prepared.reader.encoder, model.harm, logits)


def _test_metrics(
    model: ModeratorModel,
    reader: DialogueReader,
    test: list[GuardExample],
    evaluator: Evaluator | None,
) -> dict[str, Any]:
    """`evaluator`'s metrics, or by default a moderator's that shares the training caches."""
    if evaluator is not None:
        return evaluator(model, test)
    images = ImageAnalyzer(reader.images.bridge)
    moderator = DialogueModerator(model, encoder=reader.encoder, images=images)
    return evaluate_examples(moderator, test)


def _metadata(
    config: ModeratorTrainConfig,
    model: ModeratorModel,
    prepared: Prepared,
    rows: dict[Split, Rows],
    validation: dict[str, Any],
    test: dict[str, Any],
) -> dict[str, Any]:
    """What the saved model says about how it was made and how well it did."""
    plan = config.plan()
    return {
        "model": f"per turn {feature_dim(prepared.reader.encoder.dim)}→{config.hidden} "
        f"(ReLU), pooled [{', '.join(model.pools)}] → {config.hidden2} (ReLU) → harm / "
        f"category / strategy heads; float16 weights; {EMBEDDER_PIN}"
        + (
            f" with its top {model.harm.tuned_layers} layers tuned as the harm reader"
            if model.harm is not None
            else ""
        )
        + "; OCR via rapidocr-onnxruntime",
        "command": f"safeturn guard train --data-root DATA --seed {config.seed} --out OUT",
        "trained_on": dt.date.today().isoformat(),
        "seed": config.seed,
        "plan": {
            "seed": plan.seed,
            "caps": dict(plan.caps),
            "image_fraction": plan.image_fraction,
            "strategies_per_image_seed": plan.strategies_per_image_seed,
        },
        "config": {
            k: v for k, v in asdict(config).items() if k not in ("data_root", "out", "caps")
        },
        "label_rule": LABEL_RULE,
        "threshold_rule": f"lowest risk flagging <= {config.target_fpr:.0%} of the benign "
        "validation dialogues of every benign source (dialogue risk = running max over its "
        "turns)",
        "band_rule": f"thresholds at {config.band_fprs[0]:.0%} and {config.band_fprs[1]:.0%} "
        "benign validation FPR, per benign source",
        "data": counts(prepared.examples),
        "rows": {name: len(r.harm) for name, r in rows.items()},
        "images_analyzed": prepared.reader.images.analyzed,
        "texts_embedded": prepared.reader.encoder.embedded,
        "epochs": validation.pop("epochs"),
        "timings_s": {k: round(v, 1) for k, v in prepared.timings.items()},
        "validation": validation,
        "test": test,
    }
