"""Bootstrap CIs of the seed-mean test metrics, on ``selectune.evaluate.bootstrap`` (the gate's bootstrap).

Test rows are resampled with replacement; every seed's predictions are scored on the same resamples and the
scores are averaged, so the interval is that of the seed-mean metric under test-set sampling (a percentile CI).
"""
from __future__ import annotations

import numpy as np

from selectune.evaluate.bootstrap import ClassificationResampler, RegressionResampler, bootstrap_samples, estimate

CONFIDENCE = 0.95


def seed_mean_cis(y: np.ndarray, outputs_per_seed: list[np.ndarray], metrics: list[str], *, classification: bool,
                  resamples: int = 1000, seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, tuple[float | None, float | None]]:
    """metric -> (low, high) of the mean over seeds; y (N,), outputs: (N, C) probabilities or (N,) predictions per seed."""
    y = np.asarray(y)
    if classification:
        # Only threshold-free metrics are read here; positive class and threshold matter to sensitivity & co only.
        resamplers = {str(i): ClassificationResampler(y, out, positive=out.shape[1] - 1, threshold=0.5)
                      for i, out in enumerate(outputs_per_seed)}
    else:
        resamplers = {str(i): RegressionResampler(y, out) for i, out in enumerate(outputs_per_seed)}
    samples = bootstrap_samples(resamplers, len(y), resamples, seed)
    out = {}
    for metric in metrics:
        if metric not in samples["0"]:
            continue  # e.g. loss: not a metric the resamplers compute
        seed_mean = np.mean([samples[name][metric] for name in resamplers], axis=0)  # (resamples,)
        ci = estimate(float("nan"), seed_mean, confidence)
        out[metric] = (ci["ci_low"], ci["ci_high"])
    return out
