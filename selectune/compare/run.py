"""``selectune compare``: every method on the same data, splits, seeds and epoch budget, through the same loop.

Reads top to bottom: check the settings -> load and split the data once -> for each method, learning rate and
seed, load a fresh base, prepare the method (selective ``select`` or a PEFT wrapper), ``fit`` (keep-best on
validation), score validation and test, save the delta/adapter to measure it -> choose each method's learning
rate on validation -> summarise over seeds with bootstrap CIs -> recommend -> write JSON, plots, table.

Everything is written to a partial folder and renamed into place at the end.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from selectune.compare.contenders import Contender, parse_contenders, prepare
from selectune.compare.cost import PeakMemory
from selectune.compare.plots import plot_comparison
from selectune.compare.recommend import COSTS, recommend
from selectune.compare.summary import choose_lr, subgroup_scores, summarise
from selectune.data import DataError, load_splits
from selectune.data.check_command import check_splits
from selectune.delta import atomic_write_json, file_sha256
from selectune.models import resolve_model
from selectune.train.loop import TrainConfig, fit, make_accelerator, predict, score
from selectune.train.run import environment
from selectune.tasks import Task, task_from_options

DEFAULT_METHODS = "full,bitfit,bitfit:roles=query+mlp_in,layernorm,head,random,pafi,fish,lt_sft,lora,ia3,beft"
LR_SWEEP_FACTORS = (1 / 3, 1.0, 3.0)  # times each method's default learning rate


def compare(train: str, *, model: str, out: str, methods: str = DEFAULT_METHODS, label_col: str = "label",
            text_col: str | None = None, feature_cols: str | None = None, task: str = "classification",
            validation: str | None = None, test: str | None = None, val_fraction: float = 0.15, test_fraction: float = 0.0,
            group_col: str | None = None, group_cols: str | None = None, train_limit: int | None = None, seeds: str = "0",
            lr_sweep: bool = False, epochs: int = 3, batch_size: int = 32, max_length: int = 128, new_lr: float = 1e-2,
            weight_decay: float = 0.0, warmup_ratio: float = 0.1, metric: str | None = None, class_weight: str | None = None,
            hidden: str = "64,64", tolerance: float = 0.01, prefer: str = "parameters", min_group_n: int = 10,
            bootstrap: int = 1000, keep_deltas: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Compare methods (selective and PEFT LoRA/IA3/BEFT) on the same data, splits, seeds and epochs; recommend one.

    train: training data file (csv, tsv, jsonl, parquet)
    model: base model: a local HF folder, `minilm`, or a tabular model folder (`mlp` trains from scratch)
    out: output directory (compare.json, PNG plots); refused if it exists unless --overwrite
    methods: comma-separated methods; options follow their method (bitfit:roles=query+mlp_in,lora:r=16,ia3); PEFT baselines: lora, ia3, beft
    label_col: column with the label
    text_col: column with the text (text classification)
    feature_cols: comma-separated numeric feature columns (tabular)
    task: classification or regression (tabular)
    validation: validation file; default: split --val-fraction off TRAIN
    test: test file; default: split --test-fraction off TRAIN (one of the two is required)
    val_fraction: fraction of TRAIN held out for validation when --validation is not given
    test_fraction: fraction of TRAIN held out for test when --test is not given
    group_col: patient/group id column: all rows of a group stay in one split
    group_cols: comma-separated columns whose subgroups the recommendation checks (on validation) and the JSON reports
    train_limit: train on a stratified random subset of this many training rows (validation and test unchanged)
    seeds: comma-separated training seeds (e.g. 0,1,2): mean ± sd over them; splits are made once, with the first
    lr_sweep: try each method's default learning rate x 1/3, 1, 3 and keep the best on validation (3x the runs)
    epochs: training epochs, the same for every method
    batch_size: examples per optimizer step
    max_length: max tokens per text
    new_lr: learning rate of new parameters (a fresh classifier) under every method
    weight_decay: AdamW weight decay on matrices
    warmup_ratio: fraction of steps with linear warmup
    metric: validation metric for keep-best, the learning rate and the recommendation (default macro_f1, or rmse)
    class_weight: `balanced` weights the loss by inverse class frequency
    hidden: hidden layer sizes of a new tabular MLP
    tolerance: recommend the cheapest method whose validation metric is within this of the best (0.01 = 1 point)
    prefer: what "cheapest" means: parameters (trainable), time (median step) or memory (peak beyond weights)
    min_group_n: subgroups with fewer validation rows are listed but not judged
    bootstrap: bootstrap resamples of the test rows for the confidence intervals
    keep_deltas: keep every run's delta/adapter under OUT/runs/ (default: measured, then deleted)
    overwrite: replace OUT if it exists
    progress: show progress bars
    """
    # ---- check every setting before reading data --------------------------------------------------------------
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    features = [c.strip() for c in feature_cols.split(",") if c.strip()] if feature_cols else []
    the_task = task_from_options(label_col=label_col, text_col=text_col, feature_cols=features, task=task, max_length=max_length)
    if class_weight not in (None, "balanced"):
        raise ValueError(f"--class-weight must be 'balanced' or omitted, got {class_weight!r}")
    if test is None and not test_fraction:
        raise ValueError("compare reports test metrics: give --test FILE or --test-fraction (e.g. 0.2)")
    if prefer not in COSTS:
        raise ValueError(f"--prefer must be one of {', '.join(COSTS)}, got {prefer!r}")
    if tolerance < 0:
        raise ValueError(f"--tolerance must be >= 0 (0.01 = 1 point), got {tolerance}")
    if bootstrap < 100:
        raise ValueError(f"--bootstrap must be at least 100 resamples, got {bootstrap}")
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    seed_list = _parse_seeds(seeds)
    contenders = parse_contenders(methods)
    metric = metric or the_task.default_metric
    subgroup_columns = [c.strip() for c in group_cols.split(",") if c.strip()] if group_cols else []

    # ---- data: loaded, split (and subset) once; every run sees the same rows ----------------------------------
    splits = load_splits(train, validation, test, label_col=label_col, **the_task.data_options(),
                         val_fraction=val_fraction, test_fraction=test_fraction, group_col=group_col, seed=seed_list[0])
    for column in subgroup_columns:
        for role, frame in (("validation", splits.validation), ("test", splits.test)):
            if column not in frame.columns:
                raise DataError(f"--group-cols names {column!r}, which the {role} data lacks; its columns are "
                                f"{', '.join(map(str, frame.columns))}")
    # The same data checks as `selectune train`: leakage between the splits stops here, before any training.
    checks = check_splits(splits, id_col=group_col, group_cols=subgroup_columns or None)
    if progress:
        for warning in checks.warnings:
            print(f"selectune compare: warning: {warning.message}", file=sys.stderr)
    if train_limit is not None:
        splits.train = _subset(splits.train, train_limit, label_col if the_task.outputs_probabilities else None, seed_list[0])
        splits.protocol["train_limit"] = train_limit
        splits.protocol["sizes"]["train"] = len(splits.train)
    the_task.labels = splits.labels
    model_path = resolve_model(model)
    hidden_sizes = [int(h) for h in hidden.split(",") if h.strip()]
    # Prepare every method once on a fresh base before any training, so a method that cannot apply to this model
    # (a role it lacks, a PEFT target it lacks) stops the comparison now, not an hour in.
    for i, contender in enumerate(contenders):
        if i == 0 or not contender.needs_data:  # the first load also gives the task its tokenizer
            loaded = the_task.load_model(model_path, splits.train, hidden=hidden_sizes)
            if not contender.needs_data:
                prepare(loaded.model, contender, new_parameters=loaded.new_parameters)
    rows = {role: the_task.examples(frame) for role, frame in (("train", splits.train), ("validation", splits.validation),
                                                                 ("test", splits.test))}
    y = {"validation": the_task.label_ids(splits.validation), "test": the_task.label_ids(splits.test)}
    config = TrainConfig(new_lr=new_lr, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                         metric=metric, class_weight=class_weight, progress=progress)

    # ---- runs: method x learning rate x seed ------------------------------------------------------------------
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix="selectune-compare-"))
    try:
        partial.mkdir(parents=True)
        runs: list[dict[str, Any]] = []
        outputs: dict[tuple[str, float, int], dict[str, np.ndarray]] = {}
        for contender in contenders:
            factors = LR_SWEEP_FACTORS if lr_sweep else (1.0,)
            for lr in [float(f"{contender.default_lr * f:.3g}") for f in factors]:
                for seed in seed_list:
                    where = (partial / "runs" if keep_deltas else scratch) / _run_name(contender.text, lr, seed)
                    run, run_outputs = _run_one(contender, lr, seed, the_task, model_path, splits, rows, y, config, hidden_sizes, where)
                    runs.append(run)
                    outputs[(contender.text, lr, seed)] = run_outputs
                    if progress:
                        print(f"{contender.text} lr {lr:g} seed {seed}: validation {metric} {run['validation'][metric]:.4f}, "
                              f"test {metric} {run['test'][metric]:.4f} ({run['wall_seconds']:.0f} s)", file=sys.stderr, flush=True)

        # ---- summarise: learning rate on validation, seeds -> mean ± sd, test CIs --------------------------------
        chosen_lr = {c.text: choose_lr([r for r in runs if r["method"] == c.text], metric) for c in contenders}
        summaries = [summarise(c, chosen_lr[c.text], [r for r in runs if r["method"] == c.text], outputs, y["test"], the_task,
                               metric, bootstrap, seed_list[0]) for c in contenders]
        groups = {role: {col: frame[col].astype(str).to_numpy() for col in subgroup_columns}
                  for role, frame in (("validation", splits.validation), ("test", splits.test))}
        subgroups = {role: {s["method"]: subgroup_scores([outputs[(s["method"], s["lr"], seed)][role] for seed in seed_list],
                                                         y[role], groups[role], the_task, metric) for s in summaries}
                     for role in ("validation", "test")} if subgroup_columns else {}
        advice = recommend(summaries, metric, tolerance, prefer, subgroups.get("validation"), min_group_n)
        baseline = the_task.majority_baseline(the_task.label_ids(splits.train), y["test"])

        resolved = {"command": "selectune compare", "argv": sys.argv, "train": train, "validation": validation, "test": test,
                    "model": model, "model_path": model_path, "methods": [c.text for c in contenders], "label_col": label_col,
                    "text_col": text_col, "feature_cols": features, "task": the_task.name, "val_fraction": val_fraction,
                    "test_fraction": test_fraction, "group_col": group_col, "group_cols": subgroup_columns, "train_limit": train_limit,
                    "seeds": seed_list, "lr_sweep": lr_sweep, "lr_sweep_factors": list(LR_SWEEP_FACTORS) if lr_sweep else None,
                    "max_length": max_length, "hidden": hidden, "metric": metric, "tolerance": tolerance, "prefer": prefer,
                    "min_group_n": min_group_n, "bootstrap_resamples": bootstrap, "train_config": {k: v for k, v in vars(config).items() if k not in ("lr", "seed")}}
        data_files = {role: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
                      for role, p in (("train", train), ("validation", validation), ("test", test)) if p}
        result = {"config": resolved, "data_files": data_files, "split_protocol": splits.protocol, "metric": metric,
                  "data_checks": checks.to_json(), "majority_baseline": baseline, "methods": summaries, "recommendation": advice, "subgroups": subgroups,
                  "runs": runs, "environment": environment()}
        title = f"{Path(train).stem} ({splits.protocol['sizes']['train']} training rows, {epochs} epochs)"
        plots = plot_comparison(summaries, metric, partial, title, floor=baseline[metric] if baseline and metric in baseline else None)
        result["plots"] = [p.name for p in plots]
        atomic_write_json(partial / "compare.json", result)
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    result["out"] = str(target)
    return result


def _run_one(contender: Contender, lr: float, seed: int, task: Task, model_path: str, splits, rows, y, base_config: TrainConfig,
             hidden: list[int], where: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One training run; returns its JSON record and its (validation, test) outputs."""
    started = time.perf_counter()
    config = TrainConfig(**{**vars(base_config), "lr": lr, "seed": seed})
    torch.manual_seed(seed)  # the new classifier's initialisation
    loaded = task.load_model(model_path, splits.train, hidden=hidden)
    batches = None
    if contender.needs_data:
        # Data-driven masks (fish, lt_sft) are fitted on the first training batches, as `selectune train` does.
        loader = DataLoader(rows["train"], batch_size=config.batch_size, shuffle=False, collate_fn=task.collate)
        batches = list(islice(loader, 32))
    prepared = prepare(loaded.model, contender, batches, new_parameters=loaded.new_parameters)
    accelerator = make_accelerator(config)
    with PeakMemory(accelerator.device) as peak:
        fitted = fit(prepared.model, task, rows["train"], rows["validation"], config, lr, accelerator, new_parameters=prepared.new_parameters)
    trained = accelerator.unwrap_model(prepared.model)
    outputs, metrics = {}, {}
    for role in ("validation", "test"):
        loader = accelerator.prepare(DataLoader(rows[role], batch_size=config.eval_batch_size, collate_fn=task.collate))
        outputs[role], loss = predict(trained, task, loader, accelerator)
        metrics[role] = {**score(task, outputs[role], y[role]), "loss": loss}
    weights = prepared.save(where)
    record = {
        "method": contender.text, "kind": contender.kind, "name": contender.name, "options": prepared.options,
        "peft_config": prepared.peft_config, "lr": lr, "seed": seed, "best_epoch": fitted.best_epoch,
        "best_validation": fitted.best_metric, "validation": metrics["validation"], "test": metrics["test"], "history": fitted.history,
        "trainable_parameters": prepared.trainable_parameters, "total_parameters": prepared.total_parameters,
        "trainable_percent": prepared.trainable_percent, "steps": fitted.steps,
        "median_step_seconds": statistics.median(fitted.step_seconds), "train_seconds": fitted.train_seconds,
        "peak_memory_mb": None if peak.bytes_beyond_start is None else peak.bytes_beyond_start / 2**20, "peak_memory_how": peak.how,
        "delta_bytes": weights.stat().st_size, "delta_file": weights.name,
        "wall_seconds": time.perf_counter() - started,
        "train_config": {**vars(config), "lr": lr},
    }
    return record, outputs


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers such as 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list distinct integers such as 0,1,2; got {text!r}")
    return seeds


def _subset(frame: pd.DataFrame, n: int, label_col: str | None, seed: int) -> pd.DataFrame:
    from sklearn.model_selection import train_test_split

    if n >= len(frame):
        raise DataError(f"--train-limit {n} is not below the {len(frame)} training rows left after splitting; "
                        "give a smaller limit or drop --train-limit")
    classes = frame[label_col].nunique() if label_col else 1
    if n < 2 * classes:
        raise DataError(f"--train-limit {n} is too small for {classes} classes; give at least {2 * classes} rows")
    stratify = frame[label_col] if label_col and frame[label_col].value_counts().min() >= 2 else None
    subset, _ = train_test_split(frame, train_size=n, random_state=seed, stratify=stratify)
    missing = set(frame[label_col]) - set(subset[label_col]) if label_col else set()
    if missing:
        raise DataError(f"--train-limit {n} leaves no training rows of class(es) {sorted(missing)}; give a larger limit")
    return subset.reset_index(drop=True)


def _run_name(text: str, lr: float, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.+-]+', '-', text)}-lr{lr:g}-seed{seed}"


from selectune.compare.render import render_comparison  # noqa: E402

compare.render = render_comparison
