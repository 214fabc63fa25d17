"""What a task's outputs are, shared by tasks with the same kind of output: class probabilities (text and tabular
classification) or one value (tabular regression). Each part of a ``Task`` that depends only on its outputs
(label ids, loss, metrics, baseline, predictions, served answers) lives here once."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from selectune.evaluate.metrics import classification_metrics, majority_baseline, regression_metrics


class ClassOutputs:
    """Outputs are (N, C) class probabilities over the sorted ``labels``."""

    metric_family = "classification"
    outputs_probabilities = True
    label_col: str
    labels: list[str]

    @property
    def n_outputs(self) -> int:
        return len(self.labels)

    @property
    def default_metric(self) -> str:
        return "macro_f1"

    def label_ids(self, frame: pd.DataFrame) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        return frame[self.label_col].astype(str).map(index).to_numpy(dtype=np.int64)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], class_weights: torch.Tensor | None):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        weight = class_weights.to(logits.device, logits.dtype) if class_weights is not None else None
        return F.cross_entropy(logits.float(), batch["labels"], weight=weight), logits

    def outputs(self, model: nn.Module, logits: torch.Tensor) -> np.ndarray:
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def score(self, outputs: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
        return classification_metrics(y_true, outputs, self.n_outputs)

    def ci_metrics(self, metric: str) -> list[str]:
        return list(dict.fromkeys([metric, "accuracy", "auroc"]))

    def subgroup_score(self, metric: str, y_true: np.ndarray, outputs: np.ndarray) -> float:
        """``metric`` on a subgroup's rows. Macro-F1 averages over the classes present in the subgroup's labels, so a
        class the subgroup lacks does not add a 0 (for every method alike) that would shrink the gaps."""
        if metric == "macro_f1":
            return float(f1_score(y_true, outputs.argmax(1), labels=np.unique(y_true), average="macro", zero_division=0))
        if metric == "accuracy":
            return float(accuracy_score(y_true, outputs.argmax(1)))
        return float(self.score(outputs, y_true).get(metric, float("nan")))

    def class_weights(self, label_ids: torch.Tensor, mode: str | None) -> torch.Tensor | None:
        if mode != "balanced":
            return None
        counts = torch.bincount(label_ids, minlength=self.n_outputs).float().clamp_min(1)
        return counts.sum() / (self.n_outputs * counts)  # (C,), sklearn's "balanced"

    def majority_baseline(self, train_ids: np.ndarray, test_ids: np.ndarray) -> dict[str, float] | None:
        return majority_baseline(train_ids, test_ids, self.n_outputs)

    def positive_label(self, given: str | None) -> str | None:
        if given is None:
            if len(self.labels) == 2:
                return self.labels[1]  # sorted labels: e.g. benign/malignant -> malignant, 0/1 -> 1
            raise ValueError(f"this model has {len(self.labels)} classes {self.labels}; name the class that sensitivity, "
                             "specificity, PPV, NPV and the fairness gaps treat as positive with --positive-label")
        if given not in self.labels:
            raise ValueError(f"--positive-label {given!r} is not one of the model's labels {self.labels}")
        return given

    def unseen_labels(self, frame: pd.DataFrame) -> list[str]:
        return sorted(set(frame[self.label_col]) - set(self.labels))

    def prediction_columns(self, outputs: np.ndarray) -> dict[str, Any]:
        columns: dict[str, Any] = {"prediction": [self.labels[i] for i in outputs.argmax(1)]}
        for i, label in enumerate(self.labels):
            columns[f"prob_{label}"] = outputs[:, i]
        return columns

    def format_outputs(self, model: nn.Module, logits: torch.Tensor) -> list[dict[str, Any]]:
        """(n, C) logits -> per example {label, probabilities}, as offline."""
        labels = self.labels
        return [{"label": labels[int(np.argmax(p))], "probabilities": {label: float(v) for label, v in zip(labels, p)}}
                for p in self.outputs(model, logits)]


class ValueOutputs:
    """Outputs are one value per example; the model predicts it standardised (``target_mean``/``target_std``
    buffers) and ``predict_values`` turns it back into original units."""

    metric_family = "regression"
    outputs_probabilities = False
    label_col: str
    n_outputs = 1

    @property
    def default_metric(self) -> str:
        return "rmse"

    def label_ids(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[self.label_col].to_numpy(dtype=np.float32)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], class_weights: torch.Tensor | None):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        unwrapped = getattr(model, "module", model)
        target = (batch["labels"].float().reshape(-1, 1) - unwrapped.target_mean) / unwrapped.target_std
        return F.mse_loss(logits.float(), target), logits

    def outputs(self, model: nn.Module, logits: torch.Tensor) -> np.ndarray:
        return getattr(model, "module", model).predict_values(logits.float()).cpu().numpy()

    def score(self, outputs: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
        return regression_metrics(y_true, outputs)

    def ci_metrics(self, metric: str) -> list[str]:
        return list(dict.fromkeys([metric, "mae", "rmse"]))

    def subgroup_score(self, metric: str, y_true: np.ndarray, outputs: np.ndarray) -> float:
        return float(self.score(outputs, y_true).get(metric, float("nan")))

    def prediction_columns(self, outputs: np.ndarray) -> dict[str, Any]:
        return {"prediction": outputs}

    def format_outputs(self, model: nn.Module, logits: torch.Tensor) -> list[dict[str, Any]]:
        return [{"value": float(v)} for v in self.outputs(model, logits)]
