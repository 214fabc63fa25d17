"""Bootstrap CIs of the seed-mean test metrics, on ``selectune.evaluate.bootstrap`` (the gate's bootstrap).

Test rows are resampled with replacement; every seed's predictions are scored on the same resamples and the
scores are averaged, so the interval is that of the seed-mean metric under test-set sampling (a percentile CI).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from selectune.evaluate.bootstrap import ClassificationResampler, RegressionResampler, bootstrap_samples, estimate

CONFIDENCE = 0.95


def _resamplers(y: np.ndarray, outputs: np.ndarray, classification: bool):
    if classification:
        # Only threshold-free metrics are read here; positive class and threshold matter to sensitivity & co only.
        return ClassificationResampler(y, outputs, positive=outputs.shape[1] - 1, threshold=0.5)
    return RegressionResampler(y, outputs)


def seed_mean_cis(y: np.ndarray, outputs_per_seed: list[np.ndarray], metrics: list[str], *, classification: bool,
                  resamples: int = 1000, seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, tuple[float | None, float | None]]:
    """metric -> (low, high) of the mean over seeds; y (N,), outputs: (N, C) probabilities or (N,) predictions per seed."""
    y = np.asarray(y)
    resamplers = {str(i): _resamplers(y, out, classification) for i, out in enumerate(outputs_per_seed)}
    samples = bootstrap_samples(resamplers, len(y), resamples, seed)
    out = {}
    for metric in metrics:
        if metric not in samples["0"]:
            continue  # e.g. loss: not a metric the resamplers compute
        seed_mean = np.mean([samples[name][metric] for name in resamplers], axis=0)  # (resamples,)
        ci = estimate(float("nan"), seed_mean, confidence)
        out[metric] = (ci["ci_low"], ci["ci_high"])
    return out


def paired_seed_mean_differences(y: np.ndarray, outputs: dict[str, list[np.ndarray]], reference: str, metrics: list[str], *,
                                 classification: bool, resamples: int = 1000, seed: int = 0,
                                 confidence: float = CONFIDENCE) -> dict[str, dict[str, dict[str, Any]]]:
    """other method -> metric -> {value, ci_low, ci_high, valid_resamples} of ``reference`` - other, each the mean over
    its seeds. Every method and seed is scored on the same resampled test rows, so the interval is that of the paired
    difference (narrower than the two separate CIs when the methods err on the same rows)."""
    y = np.asarray(y)
    resamplers = {f"{method}\t{i}": _resamplers(y, out, classification) for method, per_seed in outputs.items()
                  for i, out in enumerate(per_seed)}
    samples = bootstrap_samples(resamplers, len(y), resamples, seed)

    def seed_mean(method: str, metric: str, values: dict[str, Any]) -> Any:
        return np.mean([values[f"{method}\t{i}"][metric] for i in range(len(outputs[method]))], axis=0)

    full = {name: r(np.ones((1, len(y)))) for name, r in resamplers.items()}  # (1,) per metric: the whole test set
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for other in outputs:
        if other == reference:
            continue
        out[other] = {}
        for metric in metrics:
            if metric not in samples[f"{reference}\t0"]:
                continue
            point = float(seed_mean(reference, metric, full)[0] - seed_mean(other, metric, full)[0])
            out[other][metric] = estimate(point, seed_mean(reference, metric, samples) - seed_mean(other, metric, samples), confidence)
    return out
