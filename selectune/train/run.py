"""``selectune train``: data -> select -> fit -> evaluate -> delta, with every setting saved beside it.

Everything is written to a partial folder first and renamed at the end, so a failed run (bad data, a
crash, Ctrl-C) leaves no half-written output behind.
"""
from __future__ import annotations

import json
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
from selectune.data import load_splits
from selectune.data.check_command import check_splits
from selectune.delta import atomic_write_json, file_sha256, load_delta, read_delta, read_selection, save_delta, stack_selection
from selectune.masks import merge_masks
from selectune.methods import get_method, parse_method
from selectune.models import TASK_FILE, resolve_model
from selectune.selection import select, trainable_report
from selectune.train.checkpoint import Checkpoints
from selectune.train.loop import TrainConfig, fit, make_accelerator, predict, score
from selectune.tasks import task_from_options
from torch.utils.data import DataLoader


def environment() -> dict[str, str]:
    import accelerate
    import sklearn
    import transformers

    return {"selectune": selectune.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__, "scikit-learn": sklearn.__version__,
            "platform": platform.platform()}


def train(train: str, *, model: str, out: str, method: str = "bitfit", label_col: str = "label", text_col: str | None = None,
          feature_cols: str | None = None, task: str = "classification", validation: str | None = None, test: str | None = None,
          val_fraction: float = 0.15, test_fraction: float = 0.0, group_col: str | None = None, phi_policy: str = "warn",
          lr: float | None = None, new_lr: float = 1e-2, epochs: int = 3, batch_size: int = 32, max_length: int = 128, weight_decay: float = 0.0,
          warmup_ratio: float = 0.1, seed: int = 0, grad_accum: int = 1, mixed_precision: str = "no", metric: str | None = None,
          patience: int | None = None, keep_best: bool = True, class_weight: str | None = None, dropout: float | None = None, hidden: str = "64,64",
          save_model: bool = False, init_delta: str | None = None, checkpoint: bool = True, resume: bool = False,
          overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune MODEL on TRAIN with a selective METHOD; write the delta, metrics and resolved config to OUT.

    train: training data file (csv, tsv, jsonl, parquet)
    model: base model: a local HF folder, `minilm` (bundled all-MiniLM-L6-v2), `minilm-mean` (the same, read by mean pooling), `mlp` (new tabular MLP) or a tabular model folder
    out: output directory (delta/, metrics.json, run_config.json); refused if it exists unless --overwrite
    method: selection method with options, e.g. bitfit, full, head, bitfit:roles=query+mlp_in
    label_col: column with the label
    text_col: column with the text (text classification)
    feature_cols: comma-separated numeric feature columns (tabular)
    task: classification or regression (tabular)
    validation: validation file; default: split --val-fraction off TRAIN
    test: test file; default: split --test-fraction off TRAIN (0 = no test)
    val_fraction: fraction of TRAIN held out for validation when --validation is not given
    test_fraction: fraction of TRAIN held out for test when --test is not given
    group_col: patient/group id column: all rows of a group stay in one split
    phi_policy: identifier-like text (e-mail, phone, record number, date, URL) in the data: warn, or refuse
    lr: learning rate (default: the method's, bitfit 1e-3, full 3e-5)
    new_lr: learning rate of new parameters (a fresh classifier) when pretrained ones train too
    epochs: training epochs
    batch_size: examples per optimizer step per process
    max_length: max tokens per text
    weight_decay: AdamW weight decay on matrices
    warmup_ratio: fraction of steps with linear warmup
    seed: seed for splits, init, shuffling and dropout
    grad_accum: gradient accumulation steps
    mixed_precision: no, fp16 or bf16
    metric: validation metric for keep-best/early stopping (default macro_f1, or rmse for regression)
    patience: stop after this many epochs without validation improvement
    keep_best: restore the best validation epoch at the end
    class_weight: `balanced` weights the loss by inverse class frequency
    dropout: dropout probability while training, for every dropout layer (default: the model's own)
    hidden: hidden layer sizes of a new tabular MLP
    save_model: also write the merged model to OUT/model (always done for a new MLP)
    init_delta: start from this delta's state on MODEL (a continual update); the new delta holds both, against MODEL
    checkpoint: write a checkpoint after each epoch to OUT.checkpoints/ (removed when the run completes)
    resume: continue an interrupted run from the last complete checkpoint in OUT.checkpoints/
    overwrite: replace OUT if it exists
    progress: show the progress bar
    """
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    checkpoint_dir = target.with_name(f"{target.name}.checkpoints")
    if resume and not checkpoint:
        raise ValueError("--resume continues from checkpoints; drop --no-checkpoint")
    if checkpoint_dir.exists() and not resume and not overwrite:
        raise FileExistsError(f"{checkpoint_dir} holds the checkpoints of an interrupted run; pass --resume to continue it, "
                              "or --overwrite to start over")
    features = [c.strip() for c in feature_cols.split(",") if c.strip()] if feature_cols else []
    the_task = task_from_options(label_col=label_col, text_col=text_col, feature_cols=features, task=task, max_length=max_length)
    method_name, method_options = parse_method(method)
    spec = get_method(method_name)
    spec.resolve_options(method_options)  # fail on a bad option before reading any data
    metric = metric or the_task.default_metric
    config = TrainConfig(lr=lr, new_lr=new_lr, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                         seed=seed, grad_accum=grad_accum, mixed_precision=mixed_precision, metric=metric, patience=patience,
                         keep_best=keep_best, class_weight=class_weight, dropout=dropout, progress=progress)
    if class_weight not in (None, "balanced"):
        raise ValueError(f"--class-weight must be 'balanced' or omitted, got {class_weight!r}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1) (0 turns dropout off), got {dropout}")

    # setup: data, task, model, selection
    torch.manual_seed(seed)
    splits = load_splits(train, validation, test, label_col=label_col, **the_task.data_options(),
                         val_fraction=val_fraction, test_fraction=test_fraction, group_col=group_col, seed=seed)
    # Leakage between the splits (including the validation split cut from TRAIN) stops the run here, before
    # anything is written; warnings carry counts and row numbers only, never the text they are about.
    checks = check_splits(splits, id_col=group_col, phi_policy=phi_policy)
    if int(os.environ.get("RANK", "0")) == 0:
        for warning in checks.warnings:
            print(f"selectune train: warning: {warning.message}", file=sys.stderr)
    the_task.labels = splits.labels
    model_path = resolve_model(model)
    loaded = the_task.load_model(model_path, splits.train, hidden=[int(h) for h in hidden.split(",") if h.strip()])
    net, new_parameters = loaded.model, loaded.new_parameters
    parent = None
    if init_delta:
        parent = read_selection(init_delta)
        load_delta(net, init_delta)  # refuses a delta trained on another base
        new_parameters = []  # the parent trained its new parameters: no longer random
    batches = None
    if spec.needs_data:
        # Data-driven masks (fish, lt_sft) are fitted on the first training batches; each takes its n_batches.
        loader = DataLoader(the_task.examples(splits.train), batch_size=batch_size, shuffle=False, collate_fn=the_task.collate)
        batches = list(islice(loader, 32))
    selection = select(net, method_name, new_parameters=new_parameters, batches=batches, **method_options)
    lr_used = lr if lr is not None else spec.default_lr
    accelerator = make_accelerator(config)

    # train
    train_rows = the_task.examples(splits.train)
    val_rows = the_task.examples(splits.validation)
    checkpoints = None
    if checkpoint:
        # What the run is: a checkpoint of anything else (other settings, other data) is refused on --resume.
        identity = {"train_config": {**vars(config), "progress": None, "lr": lr_used}, "method": method_name, "options": selection.options,
                    "model": model_path, "init_delta": init_delta and file_sha256(Path(init_delta) / "delta.safetensors"),
                    "data": {role: p and file_sha256(p) for role, p in (("train", train), ("validation", validation), ("test", test))},
                    "columns": [label_col, text_col, features, group_col], "split": [val_fraction, test_fraction],
                    "hidden": hidden, "max_length": max_length, "trainable": selection.trainable, "processes": accelerator.num_processes}
        if not resume:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # --overwrite: the old run's checkpoints must not mix in
        checkpoints = Checkpoints(checkpoint_dir, identity, resume=resume)
    result = fit(net, the_task, train_rows, val_rows, config, lr_used, accelerator, checkpoints, new_parameters=selection.new_parameters)
    net = accelerator.unwrap_model(net)

    # evaluate on test, beside the majority-class floor
    test_metrics, baseline = None, None
    if splits.test is not None and len(splits.test):
        loader = accelerator.prepare(DataLoader(the_task.examples(splits.test), batch_size=config.eval_batch_size, collate_fn=the_task.collate))
        outputs, test_loss = predict(net, the_task, loader, accelerator)
        y_test = the_task.label_ids(splits.test)
        test_metrics = {**score(the_task, outputs, y_test), "loss": test_loss}
        baseline = the_task.majority_baseline(the_task.label_ids(splits.train), y_test)

    summary = {
        "method": method_name, "method_options": selection.options, "lr": lr_used,
        "trainable_parameters": selection.trainable_parameters, "total_parameters": selection.total_parameters,
        "trainable_percent": selection.trainable_percent, "best_epoch": result.best_epoch,
        "best_validation": {config.metric: result.best_metric}, "test": test_metrics, "majority_baseline": baseline,
        "train_seconds": result.train_seconds, "examples_per_second": result.examples_per_second,
    }
    if not accelerator.is_main_process:
        return summary

    # save: everything into a partial folder, renamed into place at the end
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        resolved = {"command": "selectune train", "argv": sys.argv, "train": train, "validation": validation, "test": test,
                    "model": model, "model_path": model_path, "method": method_name, "method_options": selection.options,
                    "label_col": label_col, "text_col": text_col, "feature_cols": features, "task": the_task.name,
                    "val_fraction": val_fraction, "test_fraction": test_fraction, "group_col": group_col, "phi_policy": phi_policy, "hidden": hidden,
                    "max_length": max_length, "train_config": {**vars(config), "lr": lr_used}, "num_processes": accelerator.num_processes}
        data_files = {role: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
                      for role, p in (("train", train), ("validation", validation), ("test", test)) if p}
        metadata = {"task": the_task.metadata(), "base_model": model_path if model != "mlp" else "mlp",
                    "model_class": type(net).__name__, "train_config": resolved["train_config"], "seed": seed, "data_files": data_files}
        if parent is not None:
            metadata["init_delta"] = {"path": str(Path(init_delta).resolve()), "weights_sha256": read_delta(init_delta)[1]["weights_sha256"],
                                      "trained_in_update": selection.trainable}
        save_delta(net, stack_selection(parent, selection, net) if parent is not None else selection, partial / "delta", metadata=metadata)
        atomic_write_json(partial / "metrics.json", {**summary, "history": result.history, "split_protocol": splits.protocol,
                                                     "roles": trainable_report(net, selection), "environment": environment(),
                                                     "config": resolved})
        atomic_write_json(partial / "run_config.json", {**resolved, "data_files": data_files, "environment": environment()})
        atomic_write_json(partial / "checks.json", checks.to_json())
        if save_model or model == "mlp":
            merge_masks(net)  # masked weights become plain tensors with plain names before save_pretrained
            the_task.save_model(net, partial / "model")
            (partial / "model" / TASK_FILE).write_text(json.dumps(the_task.metadata(), indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the run is complete: nothing left to resume
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return summary
