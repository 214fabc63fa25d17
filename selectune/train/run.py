"""``selectune train``: data -> select -> fit -> evaluate -> delta, with every setting saved beside it.

Everything is written to a partial folder first and renamed at the end, so a failed run (bad data, a
crash, Ctrl-C) leaves no half-written output behind.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import islice
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import selectune
from selectune.config import (ColumnsConfig, ModelConfig, OutputConfig, PreprocessingConfig, SplitConfig, TrackingConfig, TrainConfig,
                              with_settings)
from selectune.data import load_splits
from selectune.data.check_command import check_splits
from selectune.delta import load_delta, read_delta, read_selection, save_delta, stack_selection
from selectune.fingerprint import file_sha256
from selectune.io import atomic_write_json, staged_folder
from selectune.masks import merge_masks
from selectune.methods import get_method, parse_method
from selectune.models import TASK_FILE, resolve_model
from selectune.selection import select, trainable_report
from selectune.train.checkpoint import Checkpoints
from selectune.text_table import table
from selectune.tracking import check as check_tracking, log as log_to_mlflow
from selectune.tracking.logs import train_log
from selectune.train.loop import fit, make_accelerator, predict, score
from selectune.tasks import Task, task_from_options
from torch.utils.data import DataLoader


def environment() -> dict[str, str]:
    import accelerate
    import sklearn
    import transformers

    return {"selectune": selectune.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__, "scikit-learn": sklearn.__version__,
            "platform": platform.platform()}


def train(train: str, *, out: str, method: str = "bitfit", columns: ColumnsConfig = ColumnsConfig(), split: SplitConfig = SplitConfig(),
          base: ModelConfig | None = None, training: TrainConfig = TrainConfig(), phi_policy: str = "warn",
          init_delta: str | None = None, output: OutputConfig = OutputConfig(),
          preprocessing: PreprocessingConfig = PreprocessingConfig(), tracking: TrackingConfig = TrackingConfig(), **settings: Any) -> dict[str, Any]:
    """Fine-tune MODEL on TRAIN with a selective METHOD; write the delta, metrics and resolved config to OUT.

    train: training data file (csv, tsv, jsonl, parquet)
    out: output directory (delta/, metrics.json, run_config.json); refused if it exists unless --overwrite
    method: selection method with options, e.g. bitfit, full, head, bitfit:roles=query+mlp_in
    phi_policy: identifier-like text (e-mail, phone, record number, date, URL) in the data: warn, or refuse
    init_delta: start from this delta's state on MODEL (a continual update); the new delta holds both, against MODEL

    Python callers may give any field of the configs flat: ``train(path, model="mlp", out="runs/x", epochs=1, resume=True)``.
    """
    configs = with_settings("train", {"columns": columns, "split": split, "base": base or ModelConfig, "training": training,
                                      "output": output, "preprocessing": preprocessing, "tracking": tracking}, settings)
    columns, split, base, training, output = (configs[k] for k in ("columns", "split", "base", "training", "output"))
    target = Path(out)
    checkpoint_dir = target.with_name(f"{target.name}.checkpoints")
    _check_run_folders(out, checkpoint_dir, checkpoint=output.checkpoint, resume=output.resume, overwrite=output.overwrite)
    check_tracking(configs["tracking"])  # mlflow installed and its server answering, before any work
    columns.validate()
    method_name, method_options = parse_method(method)
    spec = get_method(method_name)
    spec.resolve_options(method_options)  # fail on a bad option before reading any data
    _check_validation_settings(split, training)
    the_task = _task(columns, base.max_length)
    the_task.use_preprocessing(configs["preprocessing"], base.model)  # a saved base brings its own
    method_options = {**the_task.method_defaults(method_name), **method_options}
    config = training.for_task(the_task.default_metric)

    # setup: data, task, model, selection
    torch.manual_seed(config.seed)
    splits = _split(train, the_task, split, config.seed)
    # Leakage between the splits (including the validation split cut from TRAIN) stops the run here, before
    # anything is written; warnings carry counts and row numbers only, never the text they are about.
    checks = check_splits(splits, id_col=split.group_col, phi_policy=phi_policy)
    if int(os.environ.get("RANK", "0")) == 0:
        for warning in checks.warnings:
            print(f"selectune train: warning: {warning.message}", file=sys.stderr)
    the_task.labels = splits.labels
    model_path = resolve_model(base.model)
    loaded = the_task.load_model(model_path, splits.train, hidden=base.hidden)
    net = loaded.model
    parent, new_parameters = _start_from(net, init_delta, loaded.new_parameters)
    selection = select(net, method_name, new_parameters=new_parameters, batches=_mask_batches(spec, the_task, splits, config.batch_size),
                       **method_options)
    lr_used = config.lr if config.lr is not None else spec.default_lr
    accelerator = make_accelerator(config)
    resolved = {"command": "selectune train", "argv": sys.argv, "train": train, "validation": split.validation, "test": split.test,
                "model": base.model, "model_path": model_path, "method": method_name, "method_options": selection.options,
                "label_col": columns.label_col, "text_col": columns.text_col, "feature_cols": columns.feature_cols, "task": the_task.name,
                "val_fraction": split.val_fraction, "test_fraction": split.test_fraction, "group_col": split.group_col,
                "phi_policy": phi_policy, "hidden": base.hidden_text, "max_length": base.max_length,
                "preprocessing": the_task.metadata().get("preprocessing"),
                "train_config": {**vars(config), "lr": lr_used}, "num_processes": accelerator.num_processes}

    # train, then test beside the majority-class floor
    checkpoints = _checkpoints(checkpoint_dir, resolved, selection, init_delta, output.resume) if output.checkpoint else None
    val_rows = the_task.examples(splits.validation) if splits.validation is not None else []  # --val-fraction 0: last epoch kept
    result = fit(net, the_task, the_task.examples(splits.train), val_rows, config, lr_used, accelerator, checkpoints,
                 new_parameters=selection.new_parameters)
    net = accelerator.unwrap_model(net)
    test_metrics, baseline = _test_metrics(net, the_task, splits, config, accelerator)
    summary = {
        "method": method_name, "method_options": selection.options, "lr": lr_used,
        "trainable_parameters": selection.trainable_parameters, "total_parameters": selection.total_parameters,
        "trainable_percent": selection.trainable_percent, "best_epoch": result.best_epoch,
        "best_validation": {config.metric: result.best_metric} if val_rows else None, "test": test_metrics, "majority_baseline": baseline,
        "train_seconds": result.train_seconds, "examples_per_second": result.examples_per_second,
    }
    if not accelerator.is_main_process:
        return summary

    # save: everything into a partial folder, renamed into place at the end
    run = TrainedRun(net=net, task=the_task, selection=selection, parent=parent, init_delta=init_delta, resolved=resolved,
                     data_files=_data_files(train, split), summary=summary, history=result.history, splits=splits, checks=checks)
    _save(run, target, save_model=output.save_model or base.model == "mlp")
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the run is complete: nothing left to resume
    return _logged(configs["tracking"], target, summary)


def _check_validation_settings(split: SplitConfig, training: TrainConfig) -> None:
    training.validate()
    if split.validation is None and split.val_fraction == 0 and training.patience is not None:
        raise ValueError("--patience stops training when validation stops improving, and --val-fraction 0 holds out no "
                         "validation rows: drop --patience, or give --val-fraction above 0")


def _logged(tracking: TrackingConfig, target: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """With --mlflow-uri, the complete OUT logged to MLflow (after it was written: a failure leaves OUT whole)."""
    run_id = log_to_mlflow(tracking, train_log, target)
    return {**summary, "mlflow_run_id": run_id} if run_id else summary


def _task(columns: ColumnsConfig, max_length: int) -> Task:
    """The task the column settings describe; its labels are set from the data once it is read."""
    return task_from_options(label_col=columns.label_col, text_col=columns.text_col, feature_cols=columns.feature_cols,
                             task=columns.task, max_length=max_length, prompt_col=columns.prompt_col,
                             response_col=columns.response_col)


def _split(train: str, the_task: Task, split: SplitConfig, seed: int):
    """TRAIN (and the validation/test files) read and split as the configs say, for the columns the task reads."""
    return load_splits(train, split.validation, split.test, label_col=the_task.label_col, **the_task.data_options(),
                       val_fraction=split.val_fraction, test_fraction=split.test_fraction, group_col=split.group_col, seed=seed)


def _start_from(net, init_delta: str | None, new_parameters: list[str]) -> tuple[Any, list[str]]:
    """Load INIT_DELTA's state onto ``net`` (a continual update): (its selection or None, the new parameters left)."""
    if not init_delta:
        return None, new_parameters
    parent = read_selection(init_delta)
    load_delta(net, init_delta)  # refuses a delta trained on another base
    return parent, []  # the parent trained its new parameters: no longer random


def _mask_batches(spec, the_task: Task, splits, batch_size: int) -> list | None:
    """Data-driven masks (fish, lt_sft) are fitted on the first training batches; each takes its n_batches."""
    if not spec.needs_data:
        return None
    loader = DataLoader(the_task.examples(splits.train), batch_size=batch_size, shuffle=False, collate_fn=the_task.collate)
    return list(islice(loader, 32))


def _checkpoints(checkpoint_dir: Path, resolved: dict[str, Any], selection, init_delta: str | None, resume: bool) -> Checkpoints:
    # What the run is: a checkpoint of anything else (other settings, other data) is refused on --resume.
    r = resolved
    identity = {"train_config": {**r["train_config"], "progress": None}, "method": r["method"], "options": selection.options,
                "model": r["model_path"], "init_delta": init_delta and file_sha256(Path(init_delta) / "delta.safetensors"),
                "data": {role: r[role] and file_sha256(r[role]) for role in ("train", "validation", "test")},
                "columns": [r["label_col"], r["text_col"], r["feature_cols"], r["group_col"]],
                "split": [r["val_fraction"], r["test_fraction"]], "hidden": r["hidden"], "max_length": r["max_length"],
                "preprocessing": r["preprocessing"],
                "trainable": selection.trainable, "processes": r["num_processes"]}
    if not resume:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # --overwrite: the old run's checkpoints must not mix in
    return Checkpoints(checkpoint_dir, identity, resume=resume)


def _check_run_folders(out: str, checkpoint_dir: Path, *, checkpoint: bool, resume: bool, overwrite: bool) -> None:
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    if resume and not checkpoint:
        raise ValueError("--resume continues from checkpoints; drop --no-checkpoint")
    if checkpoint_dir.exists() and not resume and not overwrite:
        raise FileExistsError(f"{checkpoint_dir} holds the checkpoints of an interrupted run; pass --resume to continue it, "
                              "or --overwrite to start over")


def _data_files(train: str, split: SplitConfig) -> list[tuple[str, str | None]]:
    return [("train", train), ("validation", split.validation), ("test", split.test)]


def _test_metrics(net, the_task: Task, splits, config: TrainConfig, accelerator) -> tuple[dict | None, dict | None]:
    """Test metrics beside the majority-class floor; (None, None) without test rows."""
    if splits.test is None or not len(splits.test):
        return None, None
    loader = accelerator.prepare(DataLoader(the_task.examples(splits.test), batch_size=config.eval_batch_size, collate_fn=the_task.collate))
    outputs, test_loss = predict(net, the_task, loader, accelerator)
    y_test = the_task.label_ids(splits.test)
    test_metrics = {**score(the_task, outputs, y_test), "loss": test_loss, **the_task.loss_metrics(test_loss)}
    return test_metrics, the_task.majority_baseline(the_task.label_ids(splits.train), y_test)


@dataclass
class TrainedRun:
    """What a finished run writes to OUT."""
    net: Any
    task: Task
    selection: Any
    parent: Any
    init_delta: str | None
    resolved: dict[str, Any]
    data_files: list[tuple[str, str | None]]
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    splits: Any
    checks: Any


def _save(run: TrainedRun, target: Path, *, save_model: bool) -> None:
    """Everything into a partial folder, renamed into place at the end."""
    net, the_task, selection, resolved = run.net, run.task, run.selection, run.resolved
    with staged_folder(target) as partial:
        data_files = {role: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)} for role, p in run.data_files if p}
        metadata = {"task": the_task.metadata(), "base_model": resolved["model_path"] if resolved["model"] != "mlp" else "mlp",
                    "model_class": type(net).__name__, "train_config": resolved["train_config"], "seed": resolved["train_config"]["seed"],
                    "data_files": data_files}
        if run.parent is not None:
            metadata["init_delta"] = {"path": str(Path(run.init_delta).resolve()),
                                      "weights_sha256": read_delta(run.init_delta)[1]["weights_sha256"],
                                      "trained_in_update": selection.trainable}
        save_delta(net, stack_selection(run.parent, selection, net) if run.parent is not None else selection, partial / "delta",
                   metadata=metadata)
        atomic_write_json(partial / "metrics.json", {**run.summary, "history": run.history, "split_protocol": run.splits.protocol,
                                                     "roles": trainable_report(net, selection), "environment": environment(),
                                                     "config": resolved})
        atomic_write_json(partial / "run_config.json", {**resolved, "data_files": data_files, "environment": environment()})
        atomic_write_json(partial / "checks.json", run.checks.to_json())
        if save_model:
            merge_masks(net)  # masked weights become plain tensors with plain names before save_pretrained
            the_task.save_model(net, partial / "model")
            (partial / "model" / TASK_FILE).write_text(json.dumps(the_task.metadata(), indent=2, sort_keys=True) + "\n")


def render(result: dict[str, Any]) -> str:
    """The run in one line, then its test metrics beside the majority-class floor."""
    rows = []
    if result.get("majority_baseline"):
        rows.append({"model": "majority class", **result["majority_baseline"], "trainable %": "-"})
    if result.get("test"):
        rows.append({"model": result["method"], **result["test"], "trainable %": f"{result['trainable_percent']:.3f}"})
    cols = (["model", "n", "accuracy", "macro_f1", "auroc", "trainable %"] if "accuracy" in (result.get("test") or {})
            else ["model", "n", "mae", "rmse", "r2", "trainable %"])
    kept = (f"best epoch {result['best_epoch']}" if result.get("best_validation") else
            f"last epoch {result['best_epoch']} kept (no validation rows)")
    lines = [f"\n{result['method']}: {result['trainable_parameters']:,} of {result['total_parameters']:,} parameters "
             f"({result['trainable_percent']:.3f}%), lr {result['lr']:g}, {kept}, "
             f"{result['train_seconds']:.0f} s ({result['examples_per_second']:.1f} ex/s)"]
    if rows:
        lines.append(table(rows, cols))
    return "\n".join(lines)
