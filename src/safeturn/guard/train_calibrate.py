"""Turn fitted networks into a shipped model: round, calibrate, and set threshold and band.

The weights are rounded to float16 first, as they will be stored, so the calibration and the
threshold are those of the model that ships. The running-max harm logit is calibrated by Platt
scaling on validation; the threshold is the one that flags at most `target_fpr` of the benign
validation dialogues of *each* benign source (a pooled rate hides a source the guard
over-flags), and the LLM band is set the same way at `band_fprs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from safeturn.errors import ConfigError
from safeturn.guard.base import STRATEGY_NAMES
from safeturn.guard.dataset import CONTRAST_SOURCE, GuardExample
from safeturn.guard.features import SCALAR_NAMES, FloatArray
from safeturn.guard.model import CHANNELS, POOLS, ModeratorModel
from safeturn.guard.train_config import CATEGORIES, ModeratorTrainConfig
from safeturn.guard.train_fit import fit_network, fit_scorer
from safeturn.guard.train_harm import FrozenStates, fit_harm_reader, score_rows
from safeturn.guard.train_rows import Rows, dialogue_scores, running_max_logits
from safeturn.metrics.roc import auroc, rate, threshold_at_fpr


def fit_platt(z: npt.NDArray[np.float64], y: npt.NDArray[np.float32]) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising the log loss of sigmoid(a z + b) (L-BFGS)."""
    import torch

    known = ~np.isnan(y)
    z, y = z[known], y[known]
    zt, yt = torch.from_numpy(z.astype(np.float64)), torch.from_numpy(y.astype(np.float64))
    a = torch.ones(1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([a, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * zt + b, yt)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return float(a.detach()[0]), float(b.detach()[0])


def _log_loss(p: npt.NDArray[np.float64], y: npt.NDArray[np.float32]) -> float:
    known = ~np.isnan(y)
    p, y = np.clip(p[known], 1e-7, 1 - 1e-7), y[known]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def source_thresholds(
    final: npt.NDArray[np.float64],
    harmful: npt.NDArray[np.bool_],
    sources: Sequence[str],
    fpr: float,
) -> dict[str, float]:
    """Per benign source, the lowest threshold flagging at most `fpr` of its dialogues.

    The look-alike pairs written here (`CONTRAST_SOURCE`) are not a source: they are trained
    on to teach what the verb is done to, and a few dozen deliberately alarming benign
    requests would set every threshold.
    """
    names = np.asarray(sources)
    return {
        source: threshold_at_fpr(final[~harmful & (names == source)], fpr)
        for source in sorted(set(names[~harmful].tolist()) - {CONTRAST_SOURCE})
    }


class _Validation(NamedTuple):
    """The calibrated model's scores on the validation split."""

    z: npt.NDArray[np.float64]
    """Running-max harm logit per row, before Platt scaling."""
    risk: npt.NDArray[np.float64]
    """Calibrated running-max risk per row."""
    harmful: npt.NDArray[np.bool_]
    """Per dialogue."""
    final: npt.NDArray[np.float64]
    """Per dialogue: its risk after the last turn."""
    sources: list[str]
    """Per dialogue."""


def fit_model(
    train_rows: Rows,
    train_examples: Sequence[GuardExample],
    val_rows: Rows,
    val_examples: Sequence[GuardExample],
    config: ModeratorTrainConfig,
    states: FrozenStates | None = None,
) -> tuple[ModeratorModel, dict[str, Any]]:
    """Fit, round, calibrate and set the threshold and band; (model, validation report).

    With `config.harm_tuned_layers`, the harm reader is fine-tuned first, rounded as it will
    be stored, and its logits are written into the rows the networks then fit on (`states`
    holds the frozen layers' outputs). The threshold is the highest of the per-benign-source
    thresholds at `target_fpr`, so no benign source seen in validation is flagged more often
    than that; the band is set the same way at `band_fprs`.

    Raises:
        ConfigError: A harm reader is configured but no `states` were given.
    """
    harm, harm_report = None, None
    if config.harm_tuned_layers:
        if states is None:
            raise ConfigError("training a harm reader needs the frozen states (prepare makes them)")
        fitted, harm_report = fit_harm_reader(
            train_rows, val_rows, config, states, _weights(train_examples, config)
        )
        harm = fitted.rounded()
        train_rows, val_rows = (score_rows(harm, r, states) for r in (train_rows, val_rows))
    arrays, epochs = _fit_arrays(train_rows, train_examples, val_rows, config)
    pools = tuple(p for p in POOLS if p in config.pools)
    draft = ModeratorModel(
        arrays, (1.0, 0.0), CATEGORIES, STRATEGY_NAMES, 0.5, (0.0, 1.0), pools=pools
    ).rounded()
    val_z = running_max_logits(draft, val_rows)
    platt = fit_platt(val_z, val_rows.harm)
    calibrated = ModeratorModel(
        arrays, platt, CATEGORIES, STRATEGY_NAMES, 0.5, (0.0, 1.0), pools=pools
    ).rounded()
    val_risk = np.asarray(calibrated.calibrate(val_z), dtype=np.float64)
    harmful, final = dialogue_scores(val_risk, val_rows, val_examples)
    sources = [e.source for e in val_examples]
    per_source = source_thresholds(final, harmful, sources, config.target_fpr)
    threshold = min(max(per_source.values(), default=0.5), 1.0)
    lo = min(
        max(source_thresholds(final, harmful, sources, config.band_fprs[0]).values()), threshold
    )
    hi = max(
        max(source_thresholds(final, harmful, sources, config.band_fprs[1]).values()), threshold
    )
    validation = _Validation(val_z, val_risk, harmful, final, sources)
    report = _report(epochs, val_rows, validation, threshold, (lo, hi), per_source)
    if harm_report is not None:
        report["harm_reader"] = harm_report
    model = ModeratorModel(
        calibrated.arrays,
        platt,
        CATEGORIES,
        STRATEGY_NAMES,
        threshold,
        (lo, hi),
        pools=pools,
        harm=harm,
    )
    return model, report


def _weights(examples: Sequence[GuardExample], config: ModeratorTrainConfig) -> FloatArray:
    """Per training dialogue, its weight in the harm losses (`natural_harmful_weight`)."""
    return np.array(
        [config.natural_harmful_weight if e.natural and e.harmful else 1.0 for e in examples],
        dtype=np.float32,
    )


def _fit_arrays(
    train_rows: Rows,
    train_examples: Sequence[GuardExample],
    val_rows: Rows,
    config: ModeratorTrainConfig,
) -> tuple[dict[str, FloatArray], int]:
    """Both networks' float32 arrays, and the turn network's epochs.

    Harmful dialogues written by people weigh `natural_harmful_weight` in the scorer's loss.
    """
    arrays, epochs = fit_network(train_rows, val_rows, config)
    dim = (train_rows.x.shape[1] - len(SCALAR_NAMES)) // CHANNELS
    arrays |= fit_scorer(train_rows, val_rows, config, dim, _weights(train_examples, config))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, epochs


def _report(
    epochs: int,
    val_rows: Rows,
    validation: _Validation,
    threshold: float,
    band: tuple[float, float],
    per_source: dict[str, float],
) -> dict[str, Any]:
    """The validation report stored in the model's metadata (`epochs` is moved out of it)."""
    z, risk, harmful, final, sources = validation
    lo, hi = band
    names = np.asarray(sources)
    labelled = ~np.isnan(val_rows.harm)
    return {
        "epochs": epochs,
        "prefix_log_loss_before_platt": _log_loss(1 / (1 + np.exp(-z)), val_rows.harm),
        "prefix_log_loss": _log_loss(risk, val_rows.harm),
        "prefix_auroc": auroc(val_rows.harm[labelled] > 0.5, risk[labelled]),
        "dialogue_auroc": auroc(harmful, final),
        "dialogue_tpr_at_threshold": float(np.mean(final[harmful] >= threshold)),
        "dialogue_fpr_at_threshold": float(np.mean(final[~harmful] >= threshold)),
        "dialogue_share_in_band": float(np.mean((final >= lo) & (final <= hi))),
        "benign_source_thresholds": per_source,
        "by_source": {
            source: {
                "harmful": int((harmful & (names == source)).sum()),
                "benign": int((~harmful & (names == source)).sum()),
                "tpr": rate(final[harmful & (names == source)] >= threshold),
                "fpr": rate(final[~harmful & (names == source)] >= threshold),
            }
            for source in sorted(set(sources))
        },
    }
