"""Input preprocessing that belongs to a tabular model: imputation, missing indicators, one-hot categories.

Fitted on the training split only (scikit-learn's ``SimpleImputer`` computes the fill values), written beside the
model as JSON (``config.json`` of the TabularMLP, the task metadata of every delta): never pickled. ``transform`` is
the one function that turns raw rows into the (N, F) feature matrix, for ``train``, ``predict``, ``evaluate``,
``gate``, ``update`` and ``serve`` alike, so a served answer equals the offline one. Standardisation stays in the
model's buffers (``TabularMLP.set_statistics``), over the columns this produces.

A category never seen in training is encoded as all zeros (the "unknown" level) with a warning: never a crash.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer

from selectune.data.readers import DataError

IMPUTE_STRATEGIES = ("median", "mean", "most_frequent")
MAX_CATEGORIES = 100
"""A categorical column with more levels than this in training is refused: one-hot would add a column per level."""
UNKNOWN = "unknown"


class UnseenCategoryWarning(UserWarning):
    """A categorical value the model never saw in training; it is encoded as the "unknown" level (all zeros)."""


def category_key(value: Any) -> str | None:
    """One spelling per level: 1 from a CSV, 1.0 and "1" from JSON are the same level; a missing value is None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


@dataclass
class TabularPreprocessing:
    """What turns a tabular model's raw input columns into its feature matrix; JSON-able, fitted once."""

    columns: list[str]
    """The raw input columns, in order (``--feature-cols``)."""
    impute: str | None = None
    """``median``, ``mean`` or ``most_frequent`` for numeric columns (categorical ones take their most frequent level);
    None: a missing value is refused."""
    fill: dict[str, Any] = field(default_factory=dict)
    """Column -> the value a missing entry becomes (training split statistics)."""
    categories: dict[str, list[str]] = field(default_factory=dict)
    """Categorical column -> its levels in training, sorted; one one-hot column each."""
    indicators: list[str] = field(default_factory=list)
    """Columns with a 0/1 "was missing" feature: those with missing values in training (``--missing-indicators``)."""

    # ---- fit --------------------------------------------------------------------------------
    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: list[str], *, categorical: list[str], impute: str | None,
            missing_indicators: bool) -> "TabularPreprocessing":
        """Fit on the training rows ``frame``: fill values, category levels, which columns get indicators."""
        for name in columns:
            if frame[name].isna().all():
                raise DataError(f"Feature column {name!r} has no values in the training split (all {len(frame)} missing): "
                                "nothing to learn or impute from. Drop it from --feature-cols.")
        numeric = [c for c in columns if c not in categorical]
        fill: dict[str, Any] = {}
        if impute and numeric:
            imputer = SimpleImputer(strategy=impute).fit(frame[numeric].astype("float64").to_numpy())
            fill.update({name: float(value) for name, value in zip(numeric, imputer.statistics_)})
        levels = {}
        for name in categorical:
            keys = frame[name].map(category_key)
            found = sorted(set(keys.dropna()))
            if len(found) > MAX_CATEGORIES:
                raise DataError(f"Categorical column {name!r} has {len(found)} distinct values in the training split; one-hot "
                                f"encoding takes at most {MAX_CATEGORIES}. Group rare values into fewer levels, or drop {name!r} "
                                "from --categorical-cols (and --feature-cols) if it is an identifier or free text.")
            levels[name] = found
            if impute:
                fill[name] = SimpleImputer(strategy="most_frequent").fit(keys.dropna().to_numpy(dtype=object).reshape(-1, 1)).statistics_[0]
        indicators = [c for c in columns if missing_indicators and frame[c].isna().any()]
        return cls(columns=list(columns), impute=impute, fill=fill, categories=levels, indicators=indicators)

    # ---- apply ------------------------------------------------------------------------------
    @property
    def output_names(self) -> list[str]:
        """The model's feature columns: one per numeric column, one per level, one per indicator."""
        names = []
        for name in self.columns:
            names += [f"{name}={level}" for level in self.categories[name]] if name in self.categories else [name]
        return names + [f"{name}_missing" for name in self.indicators]

    def transform(self, frame: pd.DataFrame, where: str = "the data") -> np.ndarray:
        """Raw rows -> (N, F) float32 features; refuses a missing value only when nothing imputes it."""
        parts = []
        for name in self.columns:
            missing = frame[name].isna().to_numpy()
            if missing.any() and name not in self.fill:
                raise DataError(f"Feature column {name!r} in {where} has {int(missing.sum())} missing value(s), and this model "
                                "was trained without --impute; train with --impute median (or mean, most_frequent), or drop those rows.")
            if name in self.categories:
                parts.append(self._one_hot(name, frame[name], where))
            else:
                values = pd.to_numeric(frame[name]).astype("float64").to_numpy()
                parts.append(np.where(missing, self.fill.get(name, 0.0), values)[:, None])  # (N, 1)
        parts += [frame[name].isna().to_numpy(dtype=np.float64)[:, None] for name in self.indicators]
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(frame), 0), np.float32)

    def _one_hot(self, name: str, series: pd.Series, where: str) -> np.ndarray:
        keys = series.map(category_key).to_numpy(dtype=object)
        keys = np.where(pd.isna(keys), self.fill.get(name), keys)
        levels = self.categories[name]
        unseen = sorted({k for k in keys if k not in levels})
        if unseen:
            warnings.warn(f"{where}: categorical column {name!r} has value(s) {unseen[:5]} never seen in training "
                          f"(known: {levels[:10]}); {sum(k not in levels for k in keys)} row(s) encoded as {UNKNOWN!r} (all zeros).",
                          UnseenCategoryWarning, stacklevel=3)
        return (keys[:, None] == np.array(levels, dtype=object)[None, :]).astype(np.float64)  # (N, levels)

    # ---- JSON -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "TabularPreprocessing | None":
        return None if data is None else cls(**data)

    def canonical_bytes(self) -> bytes:
        """What the model's ``preprocessing_sha256`` buffer hashes (so the base fingerprint covers it)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    def describe(self) -> str:
        parts = [f"impute {self.impute}" if self.impute else "no imputation"]
        if self.categories:
            parts.append("one-hot " + ", ".join(f"{c} ({len(v)} levels)" for c, v in self.categories.items()))
        if self.indicators:
            parts.append("missing indicators for " + ", ".join(self.indicators))
        return "; ".join(parts)
