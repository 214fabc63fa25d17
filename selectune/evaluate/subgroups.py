"""Per-subgroup metrics with CIs, and fairness gaps (fairlearn).

Each value of each ``--group-cols`` column is a subgroup. Per subgroup: n, positives and prevalence of
the positive class (regression: the mean label), every headline metric per model with its bootstrap CI,
and the paired update - base difference. A subgroup with n < ``min_group_n`` is kept in the table but
flagged ``small`` with ``ci_reliable: false``: hiding it would hide exactly the patients a reviewer
should look at; judging it like a big one would read noise as harm.

Fairness (classification only) is measured on the thresholded decision for the positive class, one vs
rest: fairlearn's demographic parity difference (gap in the share flagged) and equalized odds
difference (larger of the TPR and FPR gaps), with the per-group rates behind them (``MetricFrame``).
Groups below ``min_group_n`` or lacking either outcome are left out of the gaps (a group with no
positives has no TPR) and listed under ``excluded``.
"""
from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count, false_positive_rate, selection_rate, true_positive_rate

from selectune.evaluate.bootstrap import (ClassificationResampler, RegressionResampler, bootstrap_samples, estimates, finite,
                                          paired_differences)
from selectune.evaluate.metrics import classification_scores, regression_scores

MISSING_GROUP = "(missing)"


def group_labels(column: pd.Series) -> np.ndarray:
    """Group values as strings (1 and 1.0 are one group), empty cells as their own group."""
    values = column.astype(object).where(column.notna(), MISSING_GROUP)
    return np.array([str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values])


def group_seed(seed: int, column: str, group: str) -> list[int]:
    # A subgroup's resamples depend on the seed and its name only, not on which other groups exist.
    return [seed, zlib.crc32(f"{column}={group}".encode())]


def score_rows(y: np.ndarray, outputs: dict[str, np.ndarray], thresholds: dict[str, float | None], positive: int | None,
               resamples: int, seed, confidence: float) -> tuple[dict, dict | None]:
    """Metrics with CIs per model on these rows, and the paired update - base difference when both exist."""
    points, resamplers = {}, {}
    for name, out in outputs.items():
        if positive is None:
            points[name], resamplers[name] = regression_scores(y, out), RegressionResampler(y, out)
        else:
            points[name] = classification_scores(y, out, positive, thresholds[name])
            resamplers[name] = ClassificationResampler(y, out, positive, thresholds[name])
    samples = bootstrap_samples(resamplers, len(y), resamples, seed)
    metrics = {name: estimates(points[name], samples[name], confidence) for name in outputs}
    difference = None
    if {"base", "update"} <= set(outputs):
        difference = paired_differences(points["update"], points["base"], samples["update"], samples["base"], confidence)
    return metrics, difference


def subgroup_tables(groups: pd.DataFrame, y: np.ndarray, outputs: dict[str, np.ndarray], thresholds: dict[str, float | None],
                    positive: int | None, *, min_group_n: int, resamples: int, seed: int, confidence: float) -> dict[str, list[dict]]:
    """{column: [row per subgroup, largest first]}; see the module docstring for a row's fields."""
    tables = {}
    for column in groups.columns:
        labels = group_labels(groups[column])
        rows = []
        for group in sorted(set(labels), key=lambda g: (-int((labels == g).sum()), g)):
            rows_of = labels == group
            y_g = y[rows_of]
            metrics, difference = score_rows(y_g, {k: v[rows_of] for k, v in outputs.items()}, thresholds, positive,
                                             resamples, group_seed(seed, column, group), confidence)
            small = int(rows_of.sum()) < min_group_n
            row = {"group": group, "n": int(rows_of.sum()), "small": small, "ci_reliable": not small,
                   "metrics": metrics, "difference": difference}
            if positive is None:
                row["mean_label"] = finite(y_g.mean())
            else:
                row["positives"] = int((y_g == positive).sum())
                row["prevalence"] = finite((y_g == positive).mean())
            rows.append(row)
        tables[column] = rows
    return tables


def fairness_gaps(groups: pd.DataFrame, y: np.ndarray, outputs: dict[str, np.ndarray], thresholds: dict[str, float],
                  positive: int, min_group_n: int) -> dict[str, dict]:
    """{column: {"included", "excluded", model: {gap metrics, "by_group": rates}}} on P(positive) >= threshold."""
    result = {}
    is_positive = y == positive
    for column in groups.columns:
        labels = group_labels(groups[column])
        excluded = {}
        for group in sorted(set(labels)):
            members = labels == group
            if members.sum() < min_group_n:
                excluded[group] = f"n={int(members.sum())} < {min_group_n}"
            elif is_positive[members].all() or not is_positive[members].any():
                excluded[group] = "only one outcome: no TPR or FPR"
        keep = ~np.isin(labels, list(excluded))
        entry: dict = {"included": sorted(set(labels[keep])), "excluded": excluded}
        for name, out in outputs.items():
            if len(entry["included"]) < 2:
                entry[name] = {"demographic_parity_difference": None, "equalized_odds_difference": None, "by_group": {}}
                continue
            flagged = out[keep, positive] >= thresholds[name]
            truth, features = is_positive[keep], labels[keep]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame = MetricFrame(metrics={"n": count, "selection_rate": selection_rate, "tpr": true_positive_rate,
                                             "fpr": false_positive_rate}, y_true=truth, y_pred=flagged, sensitive_features=features)
                gaps = frame.difference(method="between_groups")
            # fairlearn's definitions, from one MetricFrame: demographic_parity_difference is the selection-rate
            # gap; equalized_odds_difference the larger of the TPR and FPR gaps (tests compare with both functions).
            entry[name] = {
                "demographic_parity_difference": finite(gaps["selection_rate"]),
                "equalized_odds_difference": finite(max(gaps["tpr"], gaps["fpr"])),
                "by_group": {str(g): {k: (int(v) if k == "n" else finite(v)) for k, v in rates.items()}
                             for g, rates in frame.by_group.to_dict("index").items()},
            }
        result[column] = entry
    return result
