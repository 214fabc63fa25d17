"""Tasks: how a kind of data becomes a model, batches and predictions.

Every task hands the loop the same thing: batches as dicts of tensors, a model whose forward returns
an object with ``.logits``. Adding a task (causal LM) means one more class here, not a new loop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from selectune.selection import NEW_PARAMETERS_ATTR
from selectune.train.tabular import TabularMLP, TabularMLPConfig, is_tabular_model_dir

TASK_KINDS = ("text-classification", "tabular-classification", "tabular-regression")


class ModelLoadError(ValueError):
    """The base model cannot be loaded; the message says which path and what to do."""


@dataclass
class Task:
    kind: str
    label_col: str
    labels: list[str] | None = None
    """Class names (sorted) for classification; None for regression."""
    text_col: str | None = None
    feature_cols: list[str] = field(default_factory=list)
    max_length: int = 128
    tokenizer: Any = field(default=None, repr=False)

    @property
    def is_classification(self) -> bool:
        return self.kind != "tabular-regression"

    @property
    def n_outputs(self) -> int:
        return len(self.labels) if self.is_classification else 1

    def metadata(self) -> dict[str, Any]:
        return {"kind": self.kind, "label_col": self.label_col, "labels": self.labels, "text_col": self.text_col,
                "feature_cols": self.feature_cols, "max_length": self.max_length}

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> "Task":
        return cls(**{k: data[k] for k in ("kind", "label_col", "labels", "text_col", "feature_cols", "max_length")})

    # ---- model -------------------------------------------------------------------------------
    def load_model(self, model: str, train_frame: pd.DataFrame | None = None, hidden: list[int] | None = None,
                   *, with_tokenizer: bool = True) -> nn.Module:
        """Load the base model. ``model="mlp"`` builds a fresh TabularMLP from ``train_frame``'s statistics.

        ``with_tokenizer=False`` skips the tokenizer (looking at parameters needs none)."""
        if self.kind == "text-classification":
            return self._load_text_model(model, with_tokenizer)
        if model == "mlp":
            if train_frame is None:
                raise ModelLoadError("a new MLP needs training data to standardise its inputs")
            config = TabularMLPConfig(n_features=len(self.feature_cols), n_outputs=self.n_outputs,
                                      task="classification" if self.is_classification else "regression",
                                      hidden=list(hidden or [64, 64]), feature_names=list(self.feature_cols), labels=self.labels)
            net = TabularMLP(config)
            batch = self.encode(train_frame)
            net.set_statistics(batch["features"], batch.get("labels"))
            setattr(net, NEW_PARAMETERS_ATTR, [n for n, _ in net.named_parameters()])
            return net
        if not is_tabular_model_dir(model):
            raise ModelLoadError(
                f"{model} is not a selectune tabular model directory (config.json with model_type selectune-tabular-mlp). "
                "Use --model mlp to train a new base, or the model/ folder a previous `selectune train` wrote."
            )
        net = TabularMLP.from_pretrained(model)
        if net.config.feature_names != list(self.feature_cols):
            raise ModelLoadError(f"base model {model} was trained on features {net.config.feature_names}, "
                                 f"but --feature-cols gives {list(self.feature_cols)}; use the same columns in the same order.")
        if self.is_classification and net.config.labels != self.labels:
            raise ModelLoadError(f"base model {model} predicts labels {net.config.labels}, but this data has {self.labels}; "
                                 "an update must keep the label set (train a new base for new labels).")
        setattr(net, NEW_PARAMETERS_ATTR, [])
        return net

    def _load_text_model(self, model: str, with_tokenizer: bool = True) -> nn.Module:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if not Path(model).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelLoadError(f"model {model} is not a local directory and HF_HUB_OFFLINE=1; give a local HF model folder.")
        label2id = {label: i for i, label in enumerate(self.labels)}
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the load report is ours to give (new parameters), not a wall of warnings
        hf_logging.disable_progress_bar()
        try:
            if with_tokenizer:
                self.tokenizer = AutoTokenizer.from_pretrained(model)
            net, info = AutoModelForSequenceClassification.from_pretrained(
                model, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)), label2id=label2id,
                ignore_mismatched_sizes=True, output_loading_info=True)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load a text model from {model}: {str(err).splitlines()[0]} "
                                 "Give a local Hugging Face model folder (config.json + weights + tokenizer).") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys", [])]
        names = {n for n, _ in net.named_parameters()}
        # HF's missing keys: parameters the checkpoint lacked (the new classifier) were initialised at random.
        setattr(net, NEW_PARAMETERS_ATTR, sorted(n for n in set(info.get("missing_keys", [])) | set(mismatched) if n in names))
        return net

    def save_model(self, model: nn.Module, out_dir: str | os.PathLike) -> None:
        """Write a plain model directory that loads with plain ``from_pretrained``."""
        model.save_pretrained(out_dir)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)

    # ---- data --------------------------------------------------------------------------------
    def label_ids(self, frame: pd.DataFrame) -> np.ndarray:
        if self.is_classification:
            index = {label: i for i, label in enumerate(self.labels)}
            return frame[self.label_col].astype(str).map(index).to_numpy(dtype=np.int64)
        return frame[self.label_col].to_numpy(dtype=np.float32)

    def encode(self, frame: pd.DataFrame, with_labels: bool = True) -> dict[str, torch.Tensor]:
        """Whole frame -> dict of tensors. Text: unpadded token lists, padded per batch by ``collate``."""
        out: dict[str, Any] = {}
        if self.kind == "text-classification":
            enc = self.tokenizer(frame[self.text_col].astype(str).tolist(), truncation=True, max_length=self.max_length)
            out.update({k: list(v) for k, v in enc.items()})
        else:
            out["features"] = torch.tensor(frame[self.feature_cols].to_numpy(dtype=np.float32))
        if with_labels and self.label_col in frame:
            out["labels"] = torch.tensor(self.label_ids(frame))
        return out

    def examples(self, frame: pd.DataFrame, with_labels: bool = True) -> list[dict[str, Any]]:
        """Per-row examples for a DataLoader."""
        encoded = self.encode(frame, with_labels)
        n = len(frame)
        return [{k: v[i] for k, v in encoded.items()} for i in range(n)]

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.kind == "text-classification":
            # Pad to the longest row of this batch, not to max_length: most reviews are shorter.
            text = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
            batch = dict(self.tokenizer.pad(text, return_tensors="pt"))
        else:
            batch = {"features": torch.stack([r["features"] for r in rows])}
        if "labels" in rows[0]:
            batch["labels"] = torch.stack([torch.as_tensor(r["labels"]) for r in rows])
        return batch

    # ---- loss and predictions ----------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], class_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        labels = batch["labels"]
        if self.is_classification:
            weight = class_weights.to(logits.device, logits.dtype) if class_weights is not None else None
            return F.cross_entropy(logits.float(), labels, weight=weight), logits
        unwrapped = getattr(model, "module", model)
        target = (labels.float().reshape(-1, 1) - unwrapped.target_mean) / unwrapped.target_std
        return F.mse_loss(logits.float(), target), logits

    def outputs(self, model: nn.Module, logits: torch.Tensor) -> np.ndarray:
        """Classification: (N, C) probabilities. Regression: (N,) predictions in original units."""
        if self.is_classification:
            return torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return getattr(model, "module", model).predict_values(logits.float()).cpu().numpy()
