"""Loading train/validation/test data, validating it, and making seeded (group-aware) splits."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

from selectune.config import PreprocessingConfig

from .readers import DataError, read_table

TASKS = ("classification", "regression", "generation")  # generation: the label column holds free text (no classes)


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame | None  # None: no validation rows (--val-fraction 0: train on every row)
    test: pd.DataFrame | None
    labels: list[str] | None  # sorted class names for classification; None for regression
    protocol: dict  # how the splits were made, recorded so a run can be reproduced and audited
    # split -> 0-based row of each example in the file it came from (a validation split cut from the
    # training file points into the training file), so checks can name rows a user can find
    source_rows: dict[str, np.ndarray] = field(default_factory=dict)


def load_splits(
    train: str, validation: str | None = None, test: str | None = None, *,
    label_col: str, text_col: str | None = None, feature_cols: list[str] | str | None = None,
    task: str = "classification", val_fraction: float = 0.15, test_fraction: float = 0.0,
    group_col: str | None = None, seed: int = 0, preprocessing: PreprocessingConfig = PreprocessingConfig(),
) -> Splits:
    """Read and validate the data files; split validation/test off train where no file is given.

    preprocessing: which feature columns hold categories (not numbers), and whether missing feature values are
    imputed by the model (``--impute``), so accepted.

    Without a test file and with test_fraction > 0, the test set is split off first. Both
    fractions are of the whole train file, so 0.15/0.15 gives a 70/15/15 split.
    """
    if task not in TASKS:
        raise DataError(f"Unknown task {task!r}: use 'classification', 'regression' or 'generation'.")
    if isinstance(feature_cols, str):
        feature_cols = [c.strip() for c in feature_cols.split(",") if c.strip()]
    elif feature_cols is not None:
        feature_cols = list(feature_cols)  # e.g. a tuple from BUNDLED; the protocol records a plain list
    if (text_col is None) == (not feature_cols):
        raise DataError("Give exactly one of --text-col (text data) or --feature-cols (tabular data), not both or neither.")
    if feature_cols and label_col in feature_cols:
        raise DataError(f"The label column {label_col!r} is also listed in --feature-cols; remove it from the features.")
    # val_fraction 0 without a validation file: no validation rows at all (a setting chosen beforehand, e.g. by
    # `selectune tune`, refitted on every training row); validation is then None.
    no_val = validation is None and val_fraction == 0
    split_val, split_test = validation is None and not no_val, test is None and test_fraction > 0
    check_fractions(val_fraction if split_val else None, test_fraction if split_test else None)

    columns = {"--label-col": [label_col], "--group-col": [group_col] if group_col else []}
    columns.update({"--text-col": [text_col]} if text_col else {"--feature-cols": feature_cols})
    frames = {}
    for role, path in (("train", train), ("validation", validation), ("test", test)):
        if path is not None:
            frame = read_table(path)
            # The group column only drives splitting of the train file, so other files need not have it.
            group = group_col if role == "train" else None
            needed = columns if group else {k: v for k, v in columns.items() if k != "--group-col"}
            check_frame(frame, f"{role} file {path}", needed, label_col, text_col, feature_cols, task, group,
                        categorical_cols=preprocessing.categorical_cols, allow_missing=bool(preprocessing.impute))
            frames[role] = prepare(frame, label_col, task, feature_cols, preprocessing.categorical_cols)
    refuse_empty_features(frames["train"], feature_cols, train)

    data, stratified = frames.pop("train"), True
    if task == "classification" and data[label_col].nunique() < 2:
        raise DataError(f"Classification needs at least 2 classes, but the training file {train} only has "
                        f"{sorted(data[label_col].unique())}. Check --label-col, or use --task regression for numeric targets.")
    if group_col and data[group_col].nunique() < 2:
        raise DataError(f"Column {group_col!r} (--group-col) has fewer than 2 groups in {train}; "
                        "splitting needs at least 2 groups. Use a different column or drop --group-col.")
    y = data[label_col] if task == "classification" else None
    if split_test:
        data, frames["test"], ok = split_off(data, test_fraction, y, group_col, seed, "test", "--test-fraction")
        stratified &= ok
    if split_val:
        y = data[label_col] if task == "classification" else None
        fraction = val_fraction / (1 - test_fraction) if split_test else val_fraction
        data, frames["validation"], ok = split_off(data, fraction, y, group_col, seed, "validation", "--val-fraction")
        stratified &= ok
    made = split_val or split_test
    split_roles = {role for role, was_split in (("validation", split_val), ("test", split_test)) if was_split}
    labels = check_classes(data, frames, label_col, train, split_roles) if task == "classification" else None

    source_rows = {"train": data.index.to_numpy(), **{role: frame.index.to_numpy() for role, frame in frames.items()}}
    result = Splits(data.reset_index(drop=True), None if no_val else frames["validation"].reset_index(drop=True),
                    frames["test"].reset_index(drop=True) if "test" in frames else None, labels, {}, source_rows)
    result.protocol = {
        "source": "split" if made else "files",
        "files": {"train": str(train), "validation": validation and str(validation), "test": test and str(test)},
        "task": task, "label_col": label_col, "text_col": text_col, "feature_cols": feature_cols,
        "val_fraction": val_fraction if split_val or no_val else None,
        "test_fraction": test_fraction if split_test else None,
        "seed": seed, "stratified": bool(made and stratified and task == "classification"), "group_col": group_col,
        "sizes": {"train": len(result.train), "validation": 0 if no_val else len(result.validation),
                  "test": 0 if result.test is None else len(result.test)},
    }
    return result


def check_fractions(val_fraction: float | None, test_fraction: float | None) -> None:
    """The fractions split off TRAIN (None: that split is not cut from it)."""
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1 (got {val_fraction}), 0 to train on every row with no validation, "
                        "or pass a --validation file.")
    if test_fraction is not None and not (0 < test_fraction < 1 and test_fraction + (val_fraction or 0) < 1):
        raise DataError(f"--test-fraction ({test_fraction}) plus --val-fraction ({val_fraction or 0}) must stay "
                        "between 0 and 1; choose smaller fractions.")


def refuse_empty_features(frame: pd.DataFrame, feature_cols: list[str] | None, path: str) -> None:
    """A feature with no value in the training file (accepted cell by cell under --impute) has nothing to learn from."""
    empty = [name for name in feature_cols or [] if frame[name].isna().all()]
    if empty:
        raise DataError(f"Feature column {empty[0]!r} has no values in the training file {path} (all {len(frame)} missing): "
                        "nothing to learn or impute from. Drop it from --feature-cols.")


def rows(mask: pd.Series, limit: int = 5) -> str:
    """1-based data row numbers (header not counted) of the first few True entries."""
    numbers = [str(i + 1) for i in np.flatnonzero(mask.to_numpy())[:limit]]
    return ", ".join(numbers) + (", ..." if mask.sum() > limit else "")


def blank(series: pd.Series) -> pd.Series:
    """NaN or whitespace-only strings; both mean 'no value' to a user."""
    text = series.map(lambda v: isinstance(v, str) and not v.strip())
    return series.isna() | text.astype(bool)


def check_frame(frame, where, columns, label_col, text_col, feature_cols, task, group_col, *, categorical_cols=(),
                allow_missing: bool = False) -> None:
    for flag, names in columns.items():
        for name in names:
            if name not in frame.columns:
                raise DataError(f"Column {name!r} not found in {where}; it has columns: {', '.join(map(str, frame.columns))}. "
                                f"Pass the right name with {flag}.")

    # label_col None: unlabelled data to predict on (``selectune predict``).
    missing = blank(frame[label_col]) if label_col is not None else pd.Series(False, index=frame.index)
    if missing.any():
        raise DataError(f"{missing.sum()} row(s) in {where} have no label in column {label_col!r} (rows {rows(missing)}). "
                        "Drop those rows or fill in their labels.")
    if task == "regression" and label_col is not None:
        numbers = pd.to_numeric(frame[label_col], errors="coerce")
        bad = numbers.isna()
        if bad.any():
            raise DataError(f"Regression labels must be numbers, but column {label_col!r} in {where} holds "
                            f"{frame[label_col][bad].iloc[0]!r} (rows {rows(bad)}). Fix those values or use --task classification.")

    if text_col:
        empty = blank(frame[text_col])
        if empty.any():
            raise DataError(f"{empty.sum()} row(s) in {where} have empty text in column {text_col!r} (rows {rows(empty)}). "
                            "Drop those rows or fill in the text.")
        not_text = ~frame[text_col].map(lambda v: isinstance(v, str)).astype(bool)
        if not_text.any():
            raise DataError(f"Column {text_col!r} in {where} must hold text, but has non-string values such as "
                            f"{frame[text_col][not_text].iloc[0]!r} (rows {rows(not_text)}). Check that --text-col names the text column.")
    for name in feature_cols or []:
        numbers = pd.to_numeric(frame[name], errors="coerce")
        bad = numbers.isna() & frame[name].notna()
        if bad.any() and name not in categorical_cols:
            raise DataError(f"Feature column {name!r} in {where} is not numeric: it holds {frame[name][bad].iloc[0]!r} "
                            f"(rows {rows(bad)}). Encode it numerically (e.g. one-hot), or impute/drop it if that value marks a missing entry. "
                            f"If it holds categories, train a new base with --categorical-cols {name}.")
        if frame[name].isna().any() and not allow_missing:
            raise DataError(f"Feature column {name!r} in {where} has {frame[name].isna().sum()} missing value(s) "
                            f"(rows {rows(frame[name].isna())}). Impute them (train a new base with --impute median, mean or "
                            "most_frequent) or drop those rows.")
    if group_col and frame[group_col].isna().any():
        missing = frame[group_col].isna()
        raise DataError(f"{missing.sum()} row(s) in {where} have no group in column {group_col!r} (rows {rows(missing)}). "
                        "Fill in the group (e.g. patient id) or drop those rows.")


def prepare(frame: pd.DataFrame, label_col: str | None, task: str, feature_cols: list[str] | None,
            categorical_cols=()) -> pd.DataFrame:
    """Give validated columns one dtype per task, so files of different formats agree."""
    frame = frame.copy()
    for name in feature_cols or []:
        if name not in categorical_cols:  # categories stay as read; the model's preprocessing encodes them
            frame[name] = pd.to_numeric(frame[name])  # e.g. "1.5" strings from JSON; ints stay ints
    if label_col is None:
        return frame
    values = frame[label_col]
    if task == "regression":
        frame[label_col] = pd.to_numeric(values).astype(float)
    else:
        # Whole-number floats (1.0, e.g. from JSON) must name the same class as 1 from a CSV.
        if pd.api.types.is_float_dtype(values) and (values == values.round()).all():
            values = values.astype("int64")
        frame[label_col] = values.astype(str)
    return frame


def split_off(data, fraction, y, group_col, seed, name, flag):
    """Split `fraction` of the rows off `data`; return (rest, held_out, stratified)."""
    empty = DataError(f"Splitting {fraction:.3g} of {len(data)} training rows off as the {name} set leaves a split empty; "
                      f"choose a different {flag} or pass a {name} file.")
    if group_col is None:
        for stratify in ((y, None) if y is not None else (None,)):
            try:
                rest, held = train_test_split(data, test_size=fraction, random_state=seed, stratify=stratify)
                return rest, held, stratify is not None
            except ValueError:  # a class too small to stratify (or a split would be empty)
                continue
        raise empty

    groups = data[group_col].to_numpy()
    n_folds = max(2, round(1 / fraction))
    if y is not None and can_stratify_groups(data, y, group_col, n_folds):
        folder = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rest_idx, held_idx = next(folder.split(data, y, groups))
        stratified = True
    else:
        try:
            splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
            rest_idx, held_idx = next(splitter.split(data, groups=groups))
        except ValueError:
            raise empty from None
        stratified = False
    if len(rest_idx) == 0 or len(held_idx) == 0:
        raise empty
    return data.iloc[rest_idx], data.iloc[held_idx], stratified


def can_stratify_groups(data, y, group_col, n_folds) -> bool:
    # Every fold needs every class, so each class must appear in at least n_folds groups.
    groups_per_class = data.groupby(y.to_numpy())[group_col].nunique()
    return data[group_col].nunique() >= n_folds and groups_per_class.min() >= n_folds


def check_classes(train, others, label_col, train_path, split_roles) -> list[str]:
    # Fewer than 2 classes in the train file was rejected before splitting; if a split took a whole
    # class away from training, that class now shows up below as unseen, with the reason.
    labels = sorted(train[label_col].unique())
    for role, frame in others.items():
        unseen = sorted(set(frame[label_col]) - set(labels))
        if unseen:
            hint = (f"it has too few rows (or groups) in {train_path} to land in every split; add examples or drop that class"
                    if role in split_roles else "drop those rows or add examples of that class to the training file (free-form "
                    "responses of a causal LM: train with --task generation)")
            raise DataError(f"Label(s) {', '.join(map(repr, unseen))} in the {role} data never occur in training data, and "
                            f"the model cannot predict a class it never saw; {hint}.")
    return labels
