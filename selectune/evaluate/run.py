"""``selectune evaluate`` and ``predict``: a delta on its base (or a merged model) applied to a data file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from selectune.data import DataError, read_table
from selectune.delta import atomic_write_bytes, atomic_write_json
from selectune.models import load_for_inference
from selectune.train.loop import make_accelerator, predict as predict_outputs, score, TrainConfig


def _frame_for(task, data: str, need_labels: bool) -> pd.DataFrame:
    frame = read_table(data)
    needed = [task.text_col] if task.text_col else list(task.feature_cols)
    if need_labels:
        needed.append(task.label_col)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{data} lacks column(s) {missing} that this model needs (it has {list(frame.columns)[:12]}); "
                        "rename the columns or use the file the model was trained on.")
    if need_labels:
        blank = frame[task.label_col].isna()
        if blank.any():
            raise DataError(f"{data}: {int(blank.sum())} row(s) have an empty label in {task.label_col!r}; drop or fill them.")
        if task.is_classification:
            labels = frame[task.label_col].astype(str)
            unseen = sorted(set(labels) - set(task.labels))
            if unseen:
                raise DataError(f"{data}: label(s) {unseen} were never seen in training (known: {task.labels}); "
                                "the model cannot predict a class it never saw. Remove those rows.")
    if task.feature_cols:
        bad = [c for c in task.feature_cols if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad:
            raise DataError(f"{data}: feature column(s) {bad} are not numeric; encode them as numbers.")
    if task.text_col:
        # Numbers-only text columns arrive as numbers; the model reads strings.
        frame[task.text_col] = frame[task.text_col].astype(str)
    return frame


def _outputs(model, task, frame: pd.DataFrame, batch_size: int, with_labels: bool) -> np.ndarray:
    accelerator = make_accelerator(TrainConfig())
    loader = DataLoader(task.examples(frame, with_labels=with_labels), batch_size=batch_size, collate_fn=task.collate)
    model, loader = accelerator.prepare(model, loader)
    outputs, _ = predict_outputs(model, task, loader, accelerator)
    return outputs


def evaluate(data: str, *, delta: str | None = None, model: str | None = None, out: str | None = None,
             batch_size: int = 64, force: bool = False) -> dict[str, Any]:
    """Score a delta (on its base) or a merged model on a labelled DATA file.

    data: labelled data file (csv, tsv, jsonl, parquet) with the columns used in training
    delta: delta directory from `selectune train`
    model: base model (default: the delta's) or a merged model folder
    out: write metrics JSON here
    batch_size: examples per forward pass
    force: apply the delta even if the base fingerprint differs
    """
    net, task = load_for_inference(model, delta, force)
    frame = _frame_for(task, data, need_labels=True)
    outputs = _outputs(net, task, frame, batch_size, with_labels=False)
    metrics = score(task, outputs, task.label_ids(frame))
    result = {"data": str(Path(data).resolve()), "delta": delta, "model": model, "metrics": metrics}
    if out:
        atomic_write_json(Path(out), result)
    return result


def predict(data: str, *, out: str, delta: str | None = None, model: str | None = None, batch_size: int = 64,
            force: bool = False) -> str:
    """Write predictions (and class probabilities) for every row of DATA to OUT (csv).

    data: data file (csv, tsv, jsonl, parquet); labels not needed
    out: output CSV: the input columns plus prediction (and prob_<label> per class)
    delta: delta directory from `selectune train`
    model: base model (default: the delta's) or a merged model folder
    batch_size: examples per forward pass
    force: apply the delta even if the base fingerprint differs
    """
    net, task = load_for_inference(model, delta, force)
    frame = _frame_for(task, data, need_labels=False)
    outputs = _outputs(net, task, frame, batch_size, with_labels=False)
    result = frame.copy()
    if task.is_classification:
        result["prediction"] = [task.labels[i] for i in outputs.argmax(1)]
        for i, label in enumerate(task.labels):
            result[f"prob_{label}"] = outputs[:, i]
    else:
        result["prediction"] = outputs
    atomic_write_bytes(Path(out), result.to_csv(index=False).encode())
    return os.fspath(out)
