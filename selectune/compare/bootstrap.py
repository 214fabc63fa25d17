"""Seeded percentile bootstrap CIs of a test metric, averaged over training seeds (scipy.stats.bootstrap).

Test rows are resampled with replacement; each resample is scored for every seed's predictions and the scores
are averaged, so the interval is that of the seed-mean metric under test-set sampling. Accuracy, macro-F1,
MAE, RMSE and R² are computed for all resamples at once from counts (each equals scikit-learn's on the
full sample: ``tests/test_compare.py`` checks it); any other metric falls back to scikit-learn per resample.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import bootstrap

CONFIDENCE = 0.95


def _macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    # y, pred: (B, N) -> (B,); F1 over every known class, 0 where a class is neither true nor predicted
    # (scikit-learn's labels=range(C), zero_division=0, as selectune's training metric).
    scores = []
    for c in range(n_classes):
        true_c, pred_c = y == c, pred == c
        tp = (true_c & pred_c).sum(-1)
        denominator = true_c.sum(-1) + pred_c.sum(-1)
        scores.append(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0))
    return np.mean(scores, axis=0)


def vectorized_metric(metric: str, n_classes: int | None) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """(y (B, N), outputs (B, N[, C])) -> (B,) for metrics that count; None for the others."""
    if metric == "accuracy":
        return lambda y, probs: (probs.argmax(-1) == y).mean(-1)
    if metric == "macro_f1":
        return lambda y, probs: _macro_f1(y, probs.argmax(-1), n_classes)
    if metric == "mae":
        return lambda y, pred: np.abs(y - pred).mean(-1)
    if metric == "rmse":
        return lambda y, pred: np.sqrt(((y - pred) ** 2).mean(-1))
    if metric == "r2":
        return lambda y, pred: 1 - ((y - pred) ** 2).sum(-1) / ((y - y.mean(-1, keepdims=True)) ** 2).sum(-1)
    return None


def seed_mean_ci(y: np.ndarray, outputs_per_seed: list[np.ndarray], metric: str, n_classes: int | None,
                 score: Callable[[np.ndarray, np.ndarray], float] | None = None, *, n_resamples: int = 1000,
                 seed: int = 0, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile CI of mean-over-seeds ``metric`` on resampled rows.

    y: (N,) true values; outputs_per_seed: one (N, C) probability (or (N,) prediction) array per seed.
    score: (y, outputs) -> float for a metric without a vectorized form (e.g. AUROC via scikit-learn).
    """
    y = np.asarray(y)
    rows = np.arange(len(y))
    fast = vectorized_metric(metric, n_classes)
    if fast is not None:
        def statistic(index, axis=-1):  # index: (B, N) resampled row numbers (scipy resamples along the last axis)
            return np.mean([fast(y[index], out[index]) for out in outputs_per_seed], axis=0)
        vectorized = True
    elif score is not None:
        def statistic(index):  # index: (N,)
            return float(np.mean([score(y[index], out[index]) for out in outputs_per_seed]))
        vectorized = False
    else:
        raise ValueError(f"no bootstrap for metric {metric!r}: pass score=")
    result = bootstrap((rows,), statistic, vectorized=vectorized, n_resamples=n_resamples, confidence_level=confidence,
                       method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
