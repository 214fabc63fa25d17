"""All the evidence about one or two models on the same labelled rows, as one JSON-ready dict.

Input is predictions, never models: ``score_predictions`` needs labels (N,), each model's outputs
((N, C) probabilities or (N,) values) and thresholds, so it is testable with hand-made numbers and the
report can be rebuilt from its output alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from selectune.config import _Lists, option
from selectune.evaluate.bootstrap import BLOCK, bootstrap_samples, estimates, finite, paired_differences
from selectune.evaluate.metrics import DEFINITIONS, ECE_BINS, curves
from selectune.evaluate.subgroups import fairness_gaps, score_rows, subgroup_tables


@dataclass
class EvaluationSettings(_Lists):
    """How ``gate`` evaluates: the bootstrap, thresholds and subgroups (one ``--flag`` per field)."""
    resamples: int = option(1000, "bootstrap resamples per CI")
    seed: int = option(0, "bootstrap seed (same seed, same CIs)")
    confidence: float = option(0.95, "confidence level of the intervals (two-sided percentile)")
    threshold_rule: str = option("youden", "youden, sensitivity=0.9 or fixed=0.5: how the threshold on P(positive) is chosen "
                                           "on validation")
    min_group_n: int = option(30, "subgroups smaller than this are flagged and their CIs marked unreliable")
    group_cols: list[str] = option([], "test-file columns whose values are subgroups: sex age_band site or sex,age_band,site")
    positive_label: str | None = option(None, "the class sensitivity/specificity/PPV/NPV and fairness treat as positive "
                                              "(default: the second of two sorted labels)")

    def validate(self) -> None:
        if self.resamples < 10:
            raise ValueError(f"--resamples must be at least 10 (got {self.resamples}); 1000 or more gives stable 95% CIs")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"--confidence must be in [0.5, 1) (got {self.confidence}); 0.95 gives 95% intervals")
        if self.min_group_n < 1:
            raise ValueError(f"--min-group-n must be at least 1 (got {self.min_group_n})")


def confusion(y: np.ndarray, probs: np.ndarray, positive: int, threshold: float) -> dict[str, int]:
    is_positive, flagged = y == positive, probs[:, positive] >= threshold
    return {"tp": int((is_positive & flagged).sum()), "fp": int((~is_positive & flagged).sum()),
            "fn": int((is_positive & ~flagged).sum()), "tn": int((~is_positive & ~flagged).sum())}


def score_predictions(y: np.ndarray, outputs: dict[str, np.ndarray], thresholds: dict[str, float | None],
                      labels: list[str] | None, settings: EvaluationSettings, groups: pd.DataFrame | None = None) -> dict:
    """Metrics with CIs, paired differences, curves, subgroups and fairness for models named in OUTPUTS.

    Classification when ``labels`` is given (then ``settings.positive_label`` must name one of them).
    """
    positive = labels.index(settings.positive_label) if labels is not None else None
    metrics, difference = score_rows(y, outputs, thresholds, positive, settings.resamples, settings.seed, settings.confidence)
    models = {}
    for name, out in outputs.items():
        models[name] = {"metrics": metrics[name], "threshold": thresholds[name]}
        if positive is not None:
            models[name]["curves"] = curves(y, out, positive, labels)
            models[name]["confusion"] = confusion(y, out, positive, thresholds[name])
        else:
            models[name]["residuals"] = {"mean": finite(np.mean(out - y)), "sd": finite(np.std(out - y))}
    groups = groups if groups is not None and len(groups.columns) else None
    subgroups = {} if groups is None else subgroup_tables(groups, y, outputs, thresholds, positive, min_group_n=settings.min_group_n,
                                                           resamples=settings.resamples, seed=settings.seed,
                                                           confidence=settings.confidence)
    fairness = {} if groups is None or positive is None else fairness_gaps(groups, y, outputs, thresholds, positive, settings.min_group_n)
    return {
        "settings": {**asdict(settings), "bootstrap": f"percentile, {settings.resamples} resamples of the test rows drawn with "
                     f"numpy default_rng(seed) in blocks of {BLOCK}; paired: the same resamples for every model",
                     "ece_bins": ECE_BINS, "ece_strategy": "uniform"},
        "definitions": DEFINITIONS,
        "task": {"labels": labels, "positive_label": settings.positive_label,
                 "label_counts": ({lab: int((y == i).sum()) for i, lab in enumerate(labels)} if labels is not None else None),
                 "n": int(len(y))},
        "models": models,
        "paired_differences": difference,
        "subgroups": subgroups,
        "fairness": fairness,
    }


def add_perplexity(scorecard: dict, losses: dict[str, np.ndarray], settings: EvaluationSettings) -> None:
    """Add ``perplexity`` with its bootstrap CI to each model in LOSSES ((N, 2): per-row summed NLL and tokens), and the
    paired update - base difference: exp(sum NLL / sum tokens) of the same resampled rows (W: (b, N) counts)."""
    def perplexity(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.exp((weights @ rows[:, 0]) / np.maximum(weights @ rows[:, 1], 1.0))

    points = {name: {"perplexity": float(perplexity(rows, np.ones(len(rows))))} for name, rows in losses.items()}
    resamplers = {name: (lambda W, rows=rows: {"perplexity": perplexity(rows, W)}) for name, rows in losses.items()}
    samples = bootstrap_samples(resamplers, len(next(iter(losses.values()))), settings.resamples, settings.seed)
    for name in losses:
        scorecard["models"][name]["metrics"].update(estimates(points[name], samples[name], settings.confidence))
    if {"base", "update"} <= set(losses) and scorecard.get("paired_differences") is not None:
        scorecard["paired_differences"].update(paired_differences(points["update"], points["base"], samples["update"],
                                                                  samples["base"], settings.confidence))
