"""Bootstrap confidence intervals, vectorised: a resample is a row of weights.

A bootstrap resample draws N row indices with replacement. Any metric of the resampled rows equals the
metric of the original rows weighted by how often each row was drawn, so B resamples become a count
matrix W (B, N) and each metric becomes a few matrix products over W: 1000 resamples of 400 rows take
milliseconds per metric instead of 1000 scikit-learn calls. The weighted formulas below reproduce
scikit-learn's definitions (``roc_auc_score``, ``average_precision_score``, ``f1_score``, ...);
``tests/test_metrics.py`` checks every one against scikit-learn on the actually resampled rows.

Resamples are drawn from ``numpy.random.default_rng(seed)`` in fixed blocks of ``BLOCK`` rows, so the
same seed gives the same indices (and CIs) on every machine and run. A *paired* difference uses the same
W for both models: the CI of update - base on the same resampled test rows.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterator

import numpy as np

from selectune.evaluate.metrics import ece_bins, calibration_target

BLOCK = 250  # resamples per block; part of the algorithm (fixed, so the index stream never depends on memory)
Resampler = Callable[[np.ndarray], dict[str, np.ndarray]]  # W (B, N) -> {metric: (B,) values}


def resample_weights(n: int, resamples: int, seed: int | list[int]) -> Iterator[np.ndarray]:
    """Blocks of bootstrap count matrices, (b, n) float64, b <= BLOCK; row sums are n."""
    rng = np.random.default_rng(seed)
    left = resamples
    while left > 0:
        b = min(BLOCK, left)
        idx = rng.integers(0, n, size=(b, n))  # (b, n) row indices drawn with replacement
        offsets = (np.arange(b) * n)[:, None]
        yield np.bincount((idx + offsets).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        left -= b


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


class RankedScores:
    """One score vector sorted once (ties grouped into levels), for AUROC and AP under any weights."""

    def __init__(self, score: np.ndarray, positive: np.ndarray):
        self.order = np.argsort(score, kind="mergesort")  # ascending
        s = score[self.order]
        self.positive = positive[self.order].astype(np.float64)
        new_level = np.r_[True, s[1:] != s[:-1]]
        self.start = np.flatnonzero(new_level)  # (L,) first sorted index of each distinct score
        self.end = np.r_[self.start[1:], len(s)]  # (L,) one past its last

    def _levels(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positive and negative weight per (resample, level): (B, L) each, levels in ascending score."""
        ws = W[:, self.order]
        pos = ws * self.positive
        cum_pos = np.concatenate([np.zeros((len(W), 1)), np.cumsum(pos, 1)], 1)  # (B, N+1)
        cum_all = np.concatenate([np.zeros((len(W), 1)), np.cumsum(ws, 1)], 1)
        level_pos = cum_pos[:, self.end] - cum_pos[:, self.start]
        level_all = cum_all[:, self.end] - cum_all[:, self.start]
        return level_pos, level_all - level_pos

    def auroc(self, W: np.ndarray) -> np.ndarray:
        # Mann-Whitney: each positive beats the negatives below its score and ties with half those at it.
        pos, neg = self._levels(W)
        neg_below = np.cumsum(neg, 1) - neg
        wins = (pos * (neg_below + 0.5 * neg)).sum(1)
        return _divide(wins, pos.sum(1) * neg.sum(1))

    def average_precision(self, W: np.ndarray) -> np.ndarray:
        # AP = sum over distinct thresholds (recall step) * precision; a level's recall step is its positive weight / P.
        pos, neg = self._levels(W)
        tp = np.cumsum(pos[:, ::-1], 1)[:, ::-1]  # (B, L) positive weight with score >= level
        flagged = tp + np.cumsum(neg[:, ::-1], 1)[:, ::-1]
        precision = np.nan_to_num(_divide(tp, flagged))
        total_pos = pos.sum(1)
        return _divide((pos * precision).sum(1), total_pos)


class ClassificationResampler:
    """Every classification headline metric under bootstrap weights (definitions: selectune.evaluate.metrics)."""

    def __init__(self, y: np.ndarray, probs: np.ndarray, positive: int, threshold: float, n_bins: int = 10):
        y = np.asarray(y)
        n_classes = probs.shape[1]
        self.ranked = ([RankedScores(probs[:, positive], y == positive)] if n_classes == 2
                       else [RankedScores(probs[:, c], y == c) for c in range(n_classes)])
        true = np.eye(n_classes)[y]  # (N, C)
        pred = np.eye(n_classes)[probs.argmax(1)]
        self.correct = (true * pred).sum(1)  # (N,)
        self.f1_parts = np.stack([true * pred, pred * (1 - true), true * (1 - pred)])  # (3, N, C): tp, fp, fn indicators
        is_pos, flagged = y == positive, probs[:, positive] >= threshold
        self.confusion = np.stack([is_pos & flagged, ~is_pos & flagged, is_pos & ~flagged, ~is_pos & ~flagged], 1).astype(float)  # (N, 4)
        self.brier = (((probs[:, positive] - is_pos) ** 2) if n_classes == 2 else ((probs - true) ** 2).sum(1))
        outcome, prob = calibration_target(y, probs, positive)
        bins = np.eye(n_bins)[ece_bins(prob, n_bins)]  # (N, bins)
        self.calibration = bins * (outcome - prob)[:, None]  # per bin: observed - predicted

    def __call__(self, W: np.ndarray) -> dict[str, np.ndarray]:
        total = W.sum(1)
        aurocs = np.stack([r.auroc(W) for r in self.ranked])  # (classes, B); any NaN class makes the macro NaN
        aps = np.stack([r.average_precision(W) for r in self.ranked])
        tp, fp, fn = (W @ part for part in self.f1_parts)  # (B, C) each
        denominator = 2 * tp + fp + fn
        f1 = np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)
        c_tp, c_fp, c_fn, c_tn = (W @ self.confusion).T  # (B,) each
        return {
            "auroc": aurocs.mean(0), "auprc": aps.mean(0),
            "accuracy": W @ self.correct / total, "macro_f1": f1.mean(1),
            "sensitivity": _divide(c_tp, c_tp + c_fn), "specificity": _divide(c_tn, c_tn + c_fp),
            "ppv": _divide(c_tp, c_tp + c_fp), "npv": _divide(c_tn, c_tn + c_fn),
            "brier": W @ self.brier / total, "ece": np.abs(W @ self.calibration).sum(1) / total,
        }


class RegressionResampler:
    def __init__(self, y: np.ndarray, pred: np.ndarray):
        self.y = np.asarray(y, dtype=float)
        self.error = np.asarray(pred, dtype=float).reshape(-1) - self.y

    def __call__(self, W: np.ndarray) -> dict[str, np.ndarray]:
        total = W.sum(1)
        sse = W @ self.error ** 2
        sst = W @ self.y ** 2 - (W @ self.y) ** 2 / total  # weighted sum of squares about the weighted mean
        sst = np.where(sst > 1e-12 * np.maximum(W @ self.y ** 2, 1), sst, 0.0)
        return {"mae": W @ np.abs(self.error) / total, "rmse": np.sqrt(sse / total), "r2": 1 - _divide(sse, sst)}


def bootstrap_samples(resamplers: dict[str, Resampler], n: int, resamples: int, seed: int | list[int]) -> dict[str, dict[str, np.ndarray]]:
    """{model: {metric: (resamples,) values}}; every model sees the same resampled rows (paired)."""
    collected: dict[str, dict[str, list]] = {name: defaultdict(list) for name in resamplers}
    for W in resample_weights(n, resamples, seed):
        for name, resampler in resamplers.items():
            for metric, values in resampler(W).items():
                collected[name][metric].append(values)
    return {name: {m: np.concatenate(v) for m, v in metrics.items()} for name, metrics in collected.items()}


def finite(value) -> float | None:
    """JSON has no NaN: undefined values are written as null."""
    return float(value) if value is not None and np.isfinite(value) else None


def estimate(point: float, samples: np.ndarray, confidence: float = 0.95) -> dict[str, float | int | None]:
    """Point estimate with a percentile bootstrap CI over the resamples where the metric is defined."""
    valid = samples[np.isfinite(samples)]
    low = high = None
    if len(valid) >= 2:
        tail = (1 - confidence) / 2 * 100
        low, high = (float(v) for v in np.percentile(valid, [tail, 100 - tail]))
    return {"value": finite(point), "ci_low": low, "ci_high": high, "valid_resamples": int(len(valid))}


def estimates(points: dict[str, float], samples: dict[str, np.ndarray], confidence: float) -> dict[str, dict]:
    return {m: estimate(points[m], samples[m], confidence) for m in points}


def paired_differences(points_new: dict[str, float], points_old: dict[str, float], samples_new: dict[str, np.ndarray],
                       samples_old: dict[str, np.ndarray], confidence: float) -> dict[str, dict]:
    """new - old per metric, CI from the same resamples (a resample where either is undefined is dropped)."""
    return {m: estimate(points_new[m] - points_old[m], samples_new[m] - samples_old[m], confidence) for m in points_new}
