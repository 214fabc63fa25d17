"""Tabular tasks: selectune's TabularMLP reads numeric feature columns; classification or regression.

``--model mlp`` builds a new base from the training data's statistics (every parameter is new), or a folder a
previous ``selectune train`` wrote is loaded as the base of an update (nothing new). A new base may impute missing
values and one-hot categories (``--impute``, ``--categorical-cols``: ``tabular_inputs.TabularPreprocessing``); an
update reuses its base's preprocessing unchanged.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from selectune.config import PreprocessingConfig
from selectune.tasks.base import Example, LoadedModel, Task, read_model_type
from selectune.tasks.errors import InputError, InputLimits, ModelLoadError
from selectune.tasks.outputs import ClassOutputs, ValueOutputs
from selectune.tasks.tabular_inputs import TabularPreprocessing
from selectune.train.tabular import MODEL_TYPE, TabularMLP, TabularMLPConfig


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past a float's range, e.g. 10**400
        return False


@dataclass
class TabularTask(Task):
    """What tabular classification and regression share: the feature columns, the MLP, the request schema."""

    label_col: str = "label"
    labels: list[str] | None = None
    """Class names (sorted) for classification; None for regression."""
    feature_cols: list[str] = field(default_factory=list)
    preprocessing: TabularPreprocessing | None = None
    """The model's fitted input preprocessing (imputation, one-hot), or None: the features are numbers as they are."""
    requested: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    """The preprocessing flags a new base (``--model mlp``) is fitted with."""

    # ---- columns and data ---------------------------------------------------------------------
    @property
    def input_columns(self) -> list[str]:
        return list(self.feature_cols)

    def data_options(self) -> dict[str, Any]:
        prep = self.preprocessing
        reads = PreprocessingConfig(impute=prep.impute, categorical_cols=list(prep.categories)) if prep else self.requested
        return {"text_col": None, "feature_cols": list(self.feature_cols) or None, "task": self.metric_family,
                **({"preprocessing": reads} if reads.requested else {})}

    def use_preprocessing(self, settings: PreprocessingConfig, model: str) -> None:
        """A new base takes the flags; a saved base brings its own preprocessing, and different flags are refused."""
        settings.validate()
        stray = [c for c in settings.categorical_cols if c not in self.feature_cols]
        if stray:
            raise ValueError(f"--categorical-cols {stray} are not among --feature-cols {list(self.feature_cols)}; "
                             "add them to --feature-cols (a categorical column is a feature too)")
        if model == "mlp" or not self.claims_model_dir(model):
            self.requested = settings
            return
        config = json.loads((Path(model) / "config.json").read_text())
        self.check_base_features(config.get("feature_names", []), model)  # before any data are read
        base = TabularPreprocessing.from_json(config.get("preprocessing"))
        same = base is not None and base.impute == settings.impute and set(base.categories) == set(settings.categorical_cols)
        if settings.requested and not same:
            raise ValueError(f"base model {model} prepares its inputs with {base.describe() if base else 'no preprocessing'}; an "
                             "update reuses its base's preprocessing unchanged: drop --impute, --missing-indicators and "
                             "--categorical-cols (or train a new base with --model mlp)")
        self.preprocessing = base

    def feature_matrix(self, frame: pd.DataFrame, where: str = "the data") -> np.ndarray:
        """(N, F) float32 model inputs of ``frame``'s raw feature columns."""
        if self.preprocessing is None:
            return frame[self.feature_cols].to_numpy(dtype=np.float32)
        return self.preprocessing.transform(frame, where)

    def encode(self, frame: pd.DataFrame, with_labels: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"features": torch.tensor(self.feature_matrix(frame))}
        if with_labels and self.label_col in frame:
            out["labels"] = torch.tensor(self.label_ids(frame))
        return out

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collate_request([{"features": r["features"]} for r in rows], None)
        if "labels" in rows[0]:
            batch["labels"] = torch.stack([torch.as_tensor(r["labels"]) for r in rows])
        return batch

    # ---- model --------------------------------------------------------------------------------
    def load_model(self, model: str, train_frame: pd.DataFrame | None = None, *, hidden: list[int] | None = None,
                   with_tokenizer: bool = True) -> LoadedModel:
        """``model="mlp"`` builds a fresh TabularMLP from ``train_frame``'s statistics; else a saved one."""
        if model == "mlp":
            if train_frame is None:
                raise ModelLoadError("a new MLP needs training data to standardise its inputs")
            if self.requested.requested:  # fitted on the training split only
                self.preprocessing = TabularPreprocessing.fit(train_frame, list(self.feature_cols), impute=self.requested.impute,
                                                              categorical=self.requested.categorical_cols,
                                                              missing_indicators=self.requested.missing_indicators)
            width = len(self.preprocessing.output_names) if self.preprocessing else len(self.feature_cols)
            config = TabularMLPConfig(n_features=width, n_outputs=self.n_outputs, task=self.metric_family,
                                      hidden=list(hidden or [64, 64]), feature_names=list(self.feature_cols), labels=self.labels,
                                      preprocessing=self.preprocessing.to_json() if self.preprocessing else None)
            net = TabularMLP(config)
            batch = self.encode(train_frame)
            net.set_statistics(batch["features"], batch.get("labels"))
            return LoadedModel(net, [n for n, _ in net.named_parameters()])
        if not self.claims_model_dir(model):
            raise ModelLoadError(
                f"{model} is not a selectune tabular model directory (config.json with model_type {MODEL_TYPE}). "
                "Use --model mlp to train a new base, or the model/ folder a previous `selectune train` wrote."
            )
        net = self.load_base(model).model.train()
        self.check_base_features(net.config.feature_names, model)
        self.check_base_labels(net.config.labels, model)
        base_preprocessing = TabularPreprocessing.from_json(net.config.preprocessing)
        if self.preprocessing is not None and self.preprocessing != base_preprocessing:
            raise ModelLoadError(f"base model {model} prepares its inputs differently ({base_preprocessing.describe() if base_preprocessing else 'none'}) "
                                 f"from this delta ({self.preprocessing.describe()}); put the delta on the base it was trained on.")
        self.preprocessing = base_preprocessing
        return LoadedModel(net, [])

    def check_base_features(self, base_features: list[str], model: str) -> None:
        """Refuse a row shape the base cannot take, naming the columns it never saw."""
        if base_features != list(self.feature_cols):
            unknown = [c for c in self.feature_cols if c not in base_features]
            raise ModelLoadError(f"base model {model} was trained on features {base_features}, but --feature-cols gives "
                                 f"{list(self.feature_cols)}" + (f" (the base never saw {unknown})" if unknown else "")
                                 + "; use the same columns in the same order.")

    def check_base_labels(self, base_labels: list[str] | None, model: str) -> None:
        """Refuse a base whose outputs mean something else (classification: another label set)."""

    def save_model(self, model: nn.Module, out_dir: str | os.PathLike) -> None:
        model.save_pretrained(out_dir)

    @classmethod
    def claims_model_dir(cls, path: str | os.PathLike) -> bool:
        return read_model_type(path) == MODEL_TYPE

    @classmethod
    def load_base(cls, path: str, n_outputs: int = 2, with_tokenizer: bool = True) -> LoadedModel:
        """A saved TabularMLP as it is (its head is trained: nothing new)."""
        try:
            return LoadedModel(TabularMLP.from_pretrained(path).eval(), [])
        except ValueError as err:  # preprocessing JSON edited after training
            raise ModelLoadError(str(err)) from None

    # ---- serving ------------------------------------------------------------------------------
    def encode_request(self, inputs: list[Any], limits: InputLimits, processor: Any) -> list[dict[str, Any]]:
        """``{feature: number}`` objects with exactly the delta's features -> a (F,) tensor each; with preprocessing, null
        (imputed) and category values too, prepared exactly as ``predict`` prepares a file's rows."""
        features = list(self.feature_cols)
        rows = []
        for i, row in enumerate(inputs):
            if not isinstance(row, dict):
                raise InputError(f"inputs[{i}] is {type(row).__name__}; this tabular model takes objects like "
                                 f"{{{', '.join(repr(f) + ': 0.0' for f in features[:3])}{', ...' if len(features) > 3 else ''}}}.")
            missing, extra = [f for f in features if f not in row], sorted(set(row) - set(features))
            if missing or extra:
                raise InputError(f"inputs[{i}]: " + "; ".join(filter(None, [
                    f"missing feature(s) {missing[:5]}" if missing else "", f"unknown feature(s) {extra[:5]}" if extra else ""]))
                    + f". The model takes exactly: {features}.")
            for name in features:
                self._check_request_value(row[name], f"inputs[{i}].{name}", name)
            rows.append(row)
        if self.preprocessing is None:
            return [{"features": torch.tensor([float(r[f]) for f in features], dtype=torch.float32)} for r in rows]
        frame = pd.DataFrame({name: pd.Series([r[name] for r in rows], dtype=object) for name in features})
        numeric = [c for c in features if c not in self.preprocessing.categories]
        frame[numeric] = frame[numeric].apply(pd.to_numeric)  # null -> NaN
        matrix = self.preprocessing.transform(frame, "the request")
        return [{"features": torch.from_numpy(matrix[j].copy())} for j in range(len(rows))]

    def _check_request_value(self, value: Any, where: str, name: str) -> None:
        prep = self.preprocessing
        if value is None and prep is not None and name in prep.fill:
            return  # imputed, as a missing value in a file is
        if prep is not None and name in prep.categories and isinstance(value, (str, int)) and not isinstance(value, bool):
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            imputed = " (or null: this model imputes missing values)" if prep is not None and name in prep.fill else ""
            raise InputError(f"{where} is {value!r}; features must be finite numbers{imputed}.")

    @classmethod
    def collate_request(cls, examples: list[dict[str, Any]], processor: Any) -> dict[str, torch.Tensor]:
        return {"features": torch.stack([e["features"] for e in examples])}  # (B, F)

    def describe(self) -> dict[str, Any]:
        described = {"features": list(self.feature_cols) or None, "max_length": None}
        if self.preprocessing is not None:
            described.update(categories=self.preprocessing.categories, impute=self.preprocessing.impute)
        return described

    # ---- metadata and options -----------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        # The format every delta since 0.1 carries (text_col/max_length are unused by tabular tasks).
        # A model with input preprocessing adds it (older readers ignore the key).
        return {"kind": self.name, "label_col": self.label_col, "labels": self.labels, "text_col": None,
                "feature_cols": list(self.feature_cols), "max_length": 128,
                **({"preprocessing": self.preprocessing.to_json()} if self.preprocessing else {})}

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> "TabularTask":
        return cls(label_col=data["label_col"], labels=data["labels"], feature_cols=list(data["feature_cols"]),
                   preprocessing=TabularPreprocessing.from_json(data.get("preprocessing")))

    def options(self) -> dict[str, Any]:
        return {"text_col": None, "feature_cols": list(self.feature_cols), "task": self.metric_family, "max_length": 128}

    @classmethod
    def from_options(cls, *, label_col: str, text_col: str | None, feature_cols: list[str], task: str,
                     max_length: int) -> "TabularTask | None":
        if text_col or task != cls.metric_family:
            return None
        return cls(label_col=label_col, feature_cols=list(feature_cols))

    @classmethod
    def write_example(cls, folder: Path, seed: int = 0) -> Example:
        """A random MLP base (hidden 8, standardised on the training rows) to update, and 3 noisy numeric features."""
        rng = np.random.default_rng(seed)
        features = ["age", "bmi", "dose"]
        paths = {name: str(folder / f"{name}.csv") for name in ("train", "validation", "test")}
        for (name, path), n in zip(paths.items(), (80, 40, 60)):
            frame = pd.DataFrame(rng.normal(size=(n, 3)).round(4), columns=features)
            frame["outcome"] = cls.example_labels(frame.to_numpy() @ np.array([1.0, -0.5, 0.25]) + rng.normal(0, 0.3, n))
            frame.to_csv(path, index=False)
        train = pd.read_csv(paths["train"])
        labels = sorted(train["outcome"].astype(str).unique()) if cls.outputs_probabilities else None
        torch.manual_seed(seed)
        base = cls(label_col="outcome", labels=labels, feature_cols=features).load_model("mlp", train, hidden=[8]).model
        base.save_pretrained(folder / "base")
        test = pd.read_csv(paths["test"])
        return Example(train=paths["train"], validation=paths["validation"], test=paths["test"],
                       train_options={"model": str(folder / "base"), "feature_cols": ",".join(features), "label_col": "outcome",
                                      "task": cls.metric_family},
                       request_inputs=test[features].to_dict("records")[:5], criteria=cls.example_criteria)

    example_criteria: ClassVar[str] = ""

    @staticmethod
    def example_labels(score: np.ndarray) -> np.ndarray:
        return score


@dataclass
class TabularClassification(ClassOutputs, TabularTask):
    name: ClassVar[str] = "tabular-classification"
    hf_task_type: ClassVar[str] = "tabular-classification"
    example_criteria: ClassVar[str] = "criteria:\n  - {metric: auroc, rule: non_inferior, margin: 1.0}\n"

    def check_base_labels(self, base_labels: list[str] | None, model: str) -> None:
        if base_labels != self.labels:
            raise ModelLoadError(f"base model {model} predicts labels {base_labels}, but this data has {self.labels}; "
                                 "an update must keep the label set (train a new base for new labels).")

    @staticmethod
    def example_labels(score: np.ndarray) -> np.ndarray:
        return np.where(score > 0, "high", "low")


@dataclass
class TabularRegression(ValueOutputs, TabularTask):
    name: ClassVar[str] = "tabular-regression"
    hf_task_type: ClassVar[str] = "tabular-regression"
    example_criteria: ClassVar[str] = "criteria:\n  - {metric: rmse, rule: max, value: 100.0}\n"
