"""``selectune evaluate`` and ``predict``: a delta on its base (or a merged model) applied to a data file."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from selectune.config import PreprocessingConfig, with_settings, without
from selectune.data import DataError, read_table
from selectune.data.splits import check_frame, prepare
from selectune.evaluate.scorecard import EvaluationSettings, score_predictions
from selectune.io import atomic_write_bytes, atomic_write_json
from selectune.models import load_for_inference
from selectune.train.loop import make_accelerator, predict as predict_outputs, score, TrainConfig


def read_frame(task, data: str, need_labels: bool) -> pd.DataFrame:
    """DATA read and checked for TASK's columns with the same checks as training data (splits.check_frame)."""
    frame = read_table(data)
    needed = list(task.input_columns)
    if need_labels:
        needed.append(task.label_col)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{data} lacks column(s) {missing} that this model needs (it has {list(frame.columns)[:12]}); "
                        "rename the columns or use the file the model was trained on.")
    label_col = task.label_col if need_labels else None
    columns = task.data_options()
    preprocessing = columns.get("preprocessing") or PreprocessingConfig()
    check_frame(frame, f"data file {data}", {}, label_col, columns["text_col"], columns["feature_cols"], columns["task"], None,
                categorical_cols=preprocessing.categorical_cols, allow_missing=bool(preprocessing.impute))
    frame = prepare(frame, label_col, columns["task"], columns["feature_cols"], preprocessing.categorical_cols)
    if need_labels:
        unseen = task.unseen_labels(frame)
        if unseen:
            raise DataError(f"{data}: label(s) {unseen} were never seen in training (known: {task.labels}); "
                            "the model cannot predict a class it never saw. Remove those rows.")
    return frame


def model_outputs(model, task, frame: pd.DataFrame, batch_size: int = 64) -> np.ndarray:
    """(N, C) class probabilities or (N,) regression values for every row of FRAME, in order."""
    return outputs_and_loss(model, task, frame, batch_size, with_labels=False)[0]


def outputs_and_loss(model, task, frame: pd.DataFrame, batch_size: int = 64, with_labels: bool = True) -> tuple[np.ndarray, float]:
    """(outputs as ``model_outputs``, the mean loss on FRAME's labels: NaN ``with_labels=False``)."""
    accelerator = make_accelerator(TrainConfig())
    loader = DataLoader(task.examples(frame, with_labels=with_labels), batch_size=batch_size, collate_fn=task.collate)
    model, loader = accelerator.prepare(model, loader)
    return predict_outputs(model, task, loader, accelerator)


# evaluate has no validation rows to choose a threshold on: P(positive) >= 0.5 flags a row.
EvaluateScoring = Annotated[EvaluationSettings, without("threshold_rule")]


def evaluate(data: str, *, delta: str | None = None, model: str | None = None, out: str | None = None,
             batch_size: int = 64, force: bool = False, scoring: EvaluateScoring = EvaluationSettings(), **flat: Any) -> dict[str, Any]:
    """Score a trained model (a delta on its base, or a merged model) on a labelled DATA file, with bootstrap CIs and subgroups.

    data: labelled data file (csv, tsv, jsonl, parquet) with the columns used in training
    delta: the trained model: a `selectune train --out` folder, its delta/ folder, a `selectune merge` folder, or a registry reference NAME@VERSION (NAME@production; REGISTRY_DIR/NAME@VERSION for a registry other than ./registry)
    model: base model to put the delta on (default: the one it records), or, without --delta, a merged model folder
    out: write metrics JSON here
    batch_size: examples per forward pass
    force: apply the delta even if the base fingerprint differs

    ``metrics`` are the point estimates; ``confidence_intervals`` (percentile bootstrap over DATA's rows, as ``gate``
    computes them: ``--resamples``, ``--seed``, ``--confidence``) and ``subgroups`` (one table per ``--group-cols``
    column) come from the gate's scorecard. Positive-class metrics (sensitivity, PPV, ...) read ``--positive-label``
    (default: the second of two labels, the last of more) flagged at P >= 0.5.
    """
    settings = dataclasses.replace(with_settings("evaluate", {"scoring": scoring}, flat)["scoring"], threshold_rule="fixed=0.5")
    settings.validate()
    net, task = load_for_inference(model, delta, force)
    frame = read_frame(task, data, need_labels=True)
    missing = [c for c in settings.group_cols if c not in frame.columns]
    if missing:
        raise DataError(f"--group-cols {missing} not found in {data}; it has columns {list(frame.columns)[:15]}")
    outputs, loss = outputs_and_loss(net, task, frame, batch_size)
    y = task.label_ids(frame)
    metrics = {**score(task, outputs, y), **task.loss_metrics(loss)}
    result = {"data": str(Path(data).resolve()), "delta": delta, "model": model, "metrics": metrics,
              **_with_cis(task, y, outputs, settings, frame)}
    if out:
        atomic_write_json(Path(out), result)
    return result


def _with_cis(task, y: np.ndarray, outputs: np.ndarray, settings: EvaluationSettings, frame: pd.DataFrame) -> dict[str, Any]:
    """The gate's scorecard of one model: metric -> {value, ci_low, ci_high}, the subgroup tables, the settings."""
    labels = task.labels if task.outputs_probabilities else None
    if labels is not None:
        settings.positive_label = settings.positive_label or labels[-1]
        task.positive_label(settings.positive_label)  # refuses a label the model does not have
    card = score_predictions(y, {"model": outputs}, {"model": 0.5 if labels is not None else None}, labels, settings,
                             frame[settings.group_cols] if settings.group_cols else None)
    subgroups = {column: [{**{k: v for k, v in row.items() if k not in ("metrics", "difference")}, "metrics": row["metrics"]["model"]}
                          for row in rows] for column, rows in card["subgroups"].items()}
    return {"confidence_intervals": card["models"]["model"]["metrics"], "subgroups": subgroups,
            "evaluation_settings": {**card["settings"], "threshold": 0.5 if labels is not None else None}}


def predict(data: str, *, out: str, delta: str | None = None, model: str | None = None, batch_size: int = 64,
            force: bool = False, max_new_tokens: int = 32) -> str:
    """Write predictions (and class probabilities) for every row of DATA to OUT (csv).

    data: data file (csv, tsv, jsonl, parquet); labels not needed
    out: output CSV: the input columns plus prediction (and prob_<label> per class)
    delta: the trained model: a `selectune train --out` folder, its delta/ folder, a `selectune merge` folder, or a registry reference NAME@VERSION (NAME@production; REGISTRY_DIR/NAME@VERSION for a registry other than ./registry)
    model: base model to put the delta on (default: the one it records), or, without --delta, a merged model folder
    batch_size: examples per forward pass
    force: apply the delta even if the base fingerprint differs
    max_new_tokens: tokens a causal LM generates per row (greedy) into the column `generated`; other tasks ignore it
    """
    net, task = load_for_inference(model, delta, force)
    frame = read_frame(task, data, need_labels=False)
    outputs = model_outputs(net, task, frame, batch_size)
    result = frame.copy()
    for column, values in {**task.prediction_columns(outputs), **task.generate_columns(net, frame, max_new_tokens)}.items():
        result[column] = values
    atomic_write_bytes(Path(out), result.to_csv(index=False).encode())
    return os.fspath(out)
