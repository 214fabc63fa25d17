"""Headline metrics, from scikit-learn: point estimates, the decision threshold, calibration and curves.

Definitions (also written into every evaluation.json under ``definitions``):

- ``auroc``/``auprc``: binary: of P(positive class). Multi-class: one-vs-rest, unweighted mean over classes
  (sklearn ``roc_auc_score(multi_class="ovr", average="macro")``; ``average_precision_score`` per class,
  averaged). AUPRC is average precision (step-wise, no interpolation). Undefined (NaN) when a class is absent.
- ``accuracy``/``macro_f1``: of the argmax class, as in training (macro-F1 over every known class).
- ``sensitivity``/``specificity``/``ppv``/``npv``: one-vs-rest for the named positive class: a row is flagged
  positive when P(positive) >= the threshold chosen on the *validation* split (:func:`choose_threshold`).
- ``brier``: sklearn ``brier_score_loss``: binary mean (P(positive) - y)^2 in [0, 1]; multi-class mean over
  rows of sum over classes (p_c - 1[y = c])^2 in [0, 2].
- ``ece``: expected calibration error over ``ECE_BINS`` equal-width bins of [0, 1] (sklearn
  ``calibration_curve`` binning, strategy "uniform"): sum over bins of (n_bin / N) * |observed - predicted|.
  Binary: of P(positive) against the positive outcome. Multi-class: top-label (Guo et al. 2017), the
  highest probability against whether the argmax class was right.
- regression: ``mae``, ``rmse``, ``r2`` (sklearn).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (accuracy_score, average_precision_score, brier_score_loss, confusion_matrix, f1_score,
                             mean_absolute_error, mean_squared_error, precision_recall_curve, r2_score, roc_auc_score, roc_curve)

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "auroc": True, "auprc": True, "sensitivity": True, "specificity": True,
                    "ppv": True, "npv": True, "brier": False, "ece": False, "r2": True, "loss": False, "perplexity": False, "mae": False, "rmse": False,
                    "demographic_parity_difference": False, "equalized_odds_difference": False}
CLASSIFICATION_METRICS = ("auroc", "auprc", "accuracy", "macro_f1", "sensitivity", "specificity", "ppv", "npv", "brier", "ece")
REGRESSION_METRICS = ("mae", "rmse", "r2")
FAIRNESS_METRICS = ("demographic_parity_difference", "equalized_odds_difference")
LOSS_METRICS = ("perplexity",)  # from a language model's per-token loss (causal-lm), beside its label metrics
ECE_BINS = 10
THRESHOLD_RULES = "youden (max sensitivity + specificity - 1), sensitivity=0.9 (highest threshold reaching it), fixed=0.5"

DEFINITIONS = {
    "auroc": "binary: AUROC of P(positive); multi-class: one-vs-rest AUROC averaged over classes (macro)",
    "auprc": "average precision (step-wise); binary: of P(positive); multi-class: one-vs-rest, macro average",
    "accuracy": "share of rows whose highest-probability class is right",
    "macro_f1": "F1 of the highest-probability class, unweighted mean over every known class",
    "sensitivity": "TP / (TP + FN), positive class one-vs-rest, flagged when P(positive) >= validation threshold",
    "specificity": "TN / (TN + FP), as sensitivity", "ppv": "TP / (TP + FP), as sensitivity",
    "npv": "TN / (TN + FN), as sensitivity",
    "brier": "binary: mean (P(positive) - y)^2; multi-class: mean over rows of sum over classes (p_c - 1[y=c])^2",
    "ece": f"{ECE_BINS} equal-width bins of [0,1]: sum of n_bin/N * |observed rate - mean predicted|; binary: P(positive); "
           "multi-class: top-label confidence vs correctness",
    "perplexity": "exp(summed NLL of the response tokens / their number), over the rows (causal-lm); bootstrap: the same "
                  "ratio on resampled rows",
    "mae": "mean absolute error", "rmse": "root mean squared error", "r2": "coefficient of determination",
    "demographic_parity_difference": "fairlearn: largest minus smallest share flagged positive across groups",
    "equalized_odds_difference": "fairlearn: larger of the between-group gaps in TPR and FPR (positive class one-vs-rest)",
}


# ---- the metrics the training loop reports per epoch --------------------------------------------------

def classification_metrics(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> dict[str, float]:
    """y_true: (N,) class indices; probs: (N, C) predicted probabilities."""
    y_true = np.asarray(y_true)
    pred = probs.argmax(axis=1)
    out = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, pred)),
        # labels= fixes the class set, so a class never predicted counts as F1 0 instead of vanishing.
        "macro_f1": float(f1_score(y_true, pred, labels=list(range(n_classes)), average="macro", zero_division=0)),
    }
    present = np.unique(y_true)
    if len(present) == n_classes and n_classes >= 2:
        if n_classes == 2:
            out["auroc"] = float(roc_auc_score(y_true, probs[:, 1]))
        else:
            out["auroc"] = float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=list(range(n_classes))))
    return out


def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    y_true, pred = np.asarray(y_true, dtype=float), np.asarray(pred, dtype=float).reshape(-1)
    return {
        "n": int(len(y_true)),
        "mae": float(mean_absolute_error(y_true, pred)),
        "rmse": float(np.sqrt(mean_squared_error(y_true, pred))),
        "r2": float(r2_score(y_true, pred)) if len(y_true) > 1 else float("nan"),
    }


def majority_baseline(train_labels: np.ndarray, test_labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """Always predict the most frequent training class: the floor every model must clear."""
    counts = np.bincount(np.asarray(train_labels), minlength=n_classes)
    probs = np.zeros((len(test_labels), n_classes))
    probs[:, counts.argmax()] = 1.0
    metrics = classification_metrics(test_labels, probs, n_classes)
    metrics.pop("auroc", None)  # a constant score has AUROC 0.5 by definition; not informative
    return metrics


# ---- the decision threshold, chosen on validation ---------------------------------------------------

def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """``youden`` | ``sensitivity=0.9`` | ``fixed=0.5`` -> (kind, value); refuses anything else."""
    kind, _, value = rule.partition("=")
    kind = kind.strip()
    try:
        number = float(value) if value else None
    except ValueError:
        number = -1.0
    if kind == "youden" and number is None:
        return kind, None
    if kind in ("sensitivity", "fixed") and number is not None and 0 <= number <= 1:
        return kind, number
    raise ValueError(f"threshold rule {rule!r} is not valid; use one of: {THRESHOLD_RULES}")


def choose_threshold(is_positive: np.ndarray, score: np.ndarray, rule: str) -> float:
    """The threshold on P(positive) (flag when score >= threshold) that RULE picks on these (validation) rows."""
    kind, value = parse_threshold_rule(rule)
    if kind == "fixed":
        return float(value)
    if is_positive.all() or not is_positive.any():
        raise ValueError(f"the validation rows hold {'only' if is_positive.all() else 'no'} positive-class examples, so a "
                         f"threshold cannot be chosen by {rule!r}; use a validation file with both, or --threshold-rule fixed=0.5")
    fpr, tpr, thresholds = roc_curve(is_positive, score, drop_intermediate=False)
    if kind == "youden":
        best = int(np.argmax(np.round(tpr - fpr, 12)))  # first (highest) threshold among ties, float noise aside
    else:
        best = int(np.flatnonzero(tpr >= value - 1e-12)[0])
    return float(min(thresholds[best], 1.0))  # roc_curve's first threshold is +inf: flag nothing


# ---- point estimates --------------------------------------------------------------------------------

def calibration_target(y: np.ndarray, probs: np.ndarray, positive: int) -> tuple[np.ndarray, np.ndarray]:
    """(outcome (N,) 0/1, predicted probability (N,)) that calibration is measured on (see module docstring)."""
    if probs.shape[1] == 2:
        return (y == positive).astype(float), probs[:, positive]
    return (probs.argmax(1) == y).astype(float), probs.max(1)


def ece_bins(prob: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin index (N,) of each probability, exactly as sklearn's calibration_curve(strategy="uniform") bins."""
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], prob)


def expected_calibration_error(outcome: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> float:
    bins = ece_bins(prob, n_bins)
    observed = np.bincount(bins, weights=outcome, minlength=n_bins)
    predicted = np.bincount(bins, weights=prob, minlength=n_bins)
    # n_b/N * |observed_b/n_b - predicted_b/n_b| = |observed_b - predicted_b| / N
    return float(np.abs(observed - predicted).sum() / len(prob))


def _quiet(fn, *args, **kwargs) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(*args, **kwargs))


def classification_scores(y: np.ndarray, probs: np.ndarray, positive: int, threshold: float) -> dict[str, float]:
    """Every classification headline metric (NaN where undefined): y (N,) class ids, probs (N, C)."""
    n_classes = probs.shape[1]
    y = np.asarray(y)
    is_positive, flagged = y == positive, probs[:, positive] >= threshold
    all_present = len(np.unique(y)) == n_classes
    nan = float("nan")
    out: dict[str, float] = {}
    if n_classes == 2:
        both = 0 < is_positive.sum() < len(y)
        out["auroc"] = _quiet(roc_auc_score, is_positive, probs[:, positive]) if both else nan
        out["auprc"] = _quiet(average_precision_score, is_positive, probs[:, positive]) if both else nan
    else:
        labels = list(range(n_classes))
        out["auroc"] = _quiet(roc_auc_score, y, probs, multi_class="ovr", average="macro", labels=labels) if all_present else nan
        onehot = np.eye(n_classes)[y]
        out["auprc"] = _quiet(average_precision_score, onehot, probs, average="macro") if all_present else nan
    pred = probs.argmax(1)
    out["accuracy"] = float(accuracy_score(y, pred))
    out["macro_f1"] = float(f1_score(y, pred, labels=list(range(n_classes)), average="macro", zero_division=0))
    tn, fp, fn, tp = confusion_matrix(is_positive, flagged, labels=[False, True]).ravel()
    ratio = lambda num, den: float(num / den) if den else nan  # noqa: E731 (undefined without rows to divide by)
    out["sensitivity"], out["specificity"] = ratio(tp, tp + fn), ratio(tn, tn + fp)
    out["ppv"], out["npv"] = ratio(tp, tp + fp), ratio(tn, tn + fn)
    out["brier"] = float(brier_score_loss(y, probs, labels=list(range(n_classes))))
    out["ece"] = expected_calibration_error(*calibration_target(y, probs, positive))
    return out


def regression_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    scores = regression_metrics(y, pred)
    scores.pop("n")
    return scores


# ---- curves, for the report -------------------------------------------------------------------------

def _points(values, digits: int = 6) -> list[float | None]:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in values]


def curves(y: np.ndarray, probs: np.ndarray, positive: int, labels: list[str]) -> dict:
    """ROC and PR points per one-vs-rest class (binary: the positive class only) and the calibration curve."""
    classes = [positive] if probs.shape[1] == 2 else range(probs.shape[1])
    roc, pr = {}, {}
    for c in classes:
        is_c = y == c
        if not 0 < is_c.sum() < len(y):
            continue  # a curve needs both outcomes
        fpr, tpr, thr = roc_curve(is_c, probs[:, c])
        roc[labels[c]] = {"fpr": _points(fpr), "tpr": _points(tpr), "threshold": _points(thr)}
        precision, recall, thr = precision_recall_curve(is_c, probs[:, c])
        pr[labels[c]] = {"precision": _points(precision), "recall": _points(recall), "threshold": _points(thr)}
    outcome, prob = calibration_target(y, probs, positive)
    observed, predicted = calibration_curve(outcome, prob, pos_label=1, n_bins=ECE_BINS, strategy="uniform")
    counts = np.bincount(ece_bins(prob), minlength=ECE_BINS)
    return {"roc": roc, "pr": pr, "calibration": {
        "predicted": _points(predicted), "observed": _points(observed), "count": [int(c) for c in counts[counts > 0]],
        "of": "P(positive) vs positive outcome" if probs.shape[1] == 2 else "top-label confidence vs correct",
        "bins": ECE_BINS, "strategy": "uniform"}}
