"""Headline metrics, from scikit-learn. Bootstrap CIs, calibration and subgroups build on these."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "auroc": True, "r2": True, "loss": False, "mae": False, "rmse": False}


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
