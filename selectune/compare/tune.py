"""``selectune tune`` (and ``selectune compare --cv K``): each method's learning rate, epochs and dropout chosen by
K-fold cross-validation on the training rows, then refitted on all of them and scored once on the test file.

Small data makes a validation split a poor judge (90 reviews with 8 neutral ones ranked BitFit's best setting
last); K folds let every training row judge once. Reads top to bottom: load the training rows and the test file ->
make the folds once (stratified by label, grouped by ``--group-col``; seeded, the same for every method) -> per
method, per (learning rate, dropout) and fold, one run of the grid's largest epoch count, scored on the held-out
fold after every epoch (so each epoch count of the grid costs nothing extra) -> the setting with the best mean over
folds -> refit on all training rows with it (per seed) -> score the test file once -> recommend, plot, write JSON.

The test rows take no part in any choice: folds, fold scores and the chosen settings are computed before the test
file is read into a model, and ``tests/test_tune.py`` checks that another test file leaves every choice unchanged.
The score after epoch e of a run scheduled for E epochs stands in for an e-epoch run (the warmup and linear decay
span E epochs there); the refit trains exactly the chosen e epochs.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from torch.utils.data import DataLoader

from selectune.compare.bench import Bench, train_contender
from selectune.compare.contenders import Contender, parse_contenders
from selectune.compare.plots import plot_comparison
from selectune.compare.recommend import check_choice_settings, recommend, scaled_tolerance
from selectune.compare.summary import summarise
from selectune.config import ColumnsConfig, ModelConfig, SplitConfig, TrainConfig, _Lists, option, with_settings, without
from selectune.data import DataError, load_splits
from selectune.data.check_command import check_splits
from selectune.evaluate.metrics import HIGHER_IS_BETTER
from selectune.fingerprint import file_sha256
from selectune.io import atomic_write_json, staged_folder
from selectune.models import resolve_model
from selectune.train.loop import predict, score
from selectune.train.run import _task, environment

# The default grid of every method: its default learning rate x these factors, these epoch counts, these dropouts.
DEFAULT_LR_FACTORS = (1 / 3, 1.0, 3.0)
DEFAULT_EPOCHS = (3, 5, 8)
DEFAULT_DROPOUTS = (0.0, 0.1)
GRID_KEYS = {"lr": float, "epochs": int, "dropout": float}


@dataclass(frozen=True)
class Setting:
    """One point of a method's grid."""
    lr: float
    epochs: int
    dropout: float

    def to_json(self) -> dict[str, Any]:
        return {"lr": self.lr, "epochs": self.epochs, "dropout": self.dropout}

    @property
    def text(self) -> str:
        return f"lr {self.lr:g}, {self.epochs} epochs, dropout {self.dropout:g}"


@dataclass
class Grid:
    """A method's grid: every (lr, dropout) is one run per fold of max(epochs) epochs, scored after each epoch."""
    lrs: list[float]
    epochs: list[int]
    dropouts: list[float]

    def settings(self) -> list[Setting]:
        return [Setting(lr, e, d) for lr in self.lrs for d in self.dropouts for e in self.epochs]


def parse_grid(items: list[str]) -> dict[str, dict[str, list]]:
    """``--grid lr=1e-3,3e-3 epochs=4,8 bitfit.dropout=0`` -> {"*": {"lr": [...], "epochs": [4, 8]}, "bitfit": {"dropout": [0.0]}}.

    The command line splits on commas as well as spaces, so an item without ``=`` continues the key before it. A key
    without a method prefix applies to every method."""
    grid: dict[str, dict[str, list]] = {}
    method, key = None, None
    for item in items:
        if "=" in item:
            name, _, value = item.partition("=")
            method, _, key = name.strip().rpartition(".")
            method = method or "*"
            if key not in GRID_KEYS:
                raise ValueError(f"--grid key {name!r}: give lr, epochs or dropout (optionally after a method and a dot, e.g. "
                                 f"bitfit.lr=1e-3,3e-3)")
            grid.setdefault(method, {})[key] = []
        elif key is None:
            raise ValueError(f"--grid item {item!r} has no key; write e.g. lr=1e-3,3e-3 epochs=4,8 dropout=0,0.1")
        else:
            value = item
        try:
            grid[method][key].append(GRID_KEYS[key](value))
        except ValueError:
            raise ValueError(f"--grid {key}: {value!r} is not a {'whole number' if key == 'epochs' else 'number'}") from None
    for values in grid.values():
        if any(e < 1 for e in values.get("epochs", [])) or any(not 0 <= d < 1 for d in values.get("dropout", [])) \
                or any(lr <= 0 for lr in values.get("lr", [])):
            raise ValueError("--grid: epochs must be >= 1, dropout in [0, 1) and lr > 0")
    return grid


def method_grid(contender: Contender, overrides: dict[str, dict[str, list]]) -> Grid:
    """The default grid of ``contender``, with ``--grid`` values for every method, then its own, put in."""
    chosen = {"lr": [float(f"{contender.default_lr * f:.3g}") for f in DEFAULT_LR_FACTORS], "epochs": list(DEFAULT_EPOCHS),
              "dropout": list(DEFAULT_DROPOUTS)}
    for scope in ("*", contender.text):
        chosen.update(overrides.get(scope, {}))
    return Grid(sorted(set(chosen["lr"])), sorted(set(chosen["epochs"])), sorted(set(chosen["dropout"])))


def make_folds(frame: pd.DataFrame, k: int, label_col: str | None, group_col: str | None, seed: int) -> list[np.ndarray]:
    """The held-out row positions of each of ``k`` folds: stratified by label (``label_col``; None: regression) and,
    with ``group_col``, no group in two folds. Seeded: the same folds for every method."""
    if k < 2:
        raise ValueError(f"--cv must be at least 2 folds, got {k}")
    if len(frame) < 2 * k:
        raise DataError(f"{k}-fold cross-validation needs at least {2 * k} training rows; there are {len(frame)}. Give a smaller --cv.")
    y = frame[label_col].astype(str).to_numpy() if label_col else np.zeros(len(frame))
    groups = frame[group_col].astype(str).to_numpy() if group_col else None
    if groups is not None and len(set(groups)) < k:
        raise DataError(f"--group-col {group_col!r} has {len(set(groups))} groups, fewer than the {k} folds; give a smaller --cv")
    if label_col and pd.Series(y).value_counts().min() < k and groups is None:
        raise DataError(f"the rarest class has {pd.Series(y).value_counts().min()} training rows, fewer than the {k} folds; "
                        "give a smaller --cv so every fold holds every class")
    if groups is not None:
        splitter = (StratifiedGroupKFold(k, shuffle=True, random_state=seed) if label_col else GroupKFold(k))
    else:
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed) if label_col else KFold(k, shuffle=True, random_state=seed)
    return [held_out for _, held_out in splitter.split(np.zeros(len(frame)), y, groups)]


def cross_validate(contender: Contender, grid: Grid, bench: Bench, folds: list[np.ndarray], progress: bool = False) -> dict[str, Any]:
    """Per setting of ``grid``, the metric on each held-out fold; the chosen setting (best mean over folds; a tie goes
    to the earlier setting: lower lr, lower dropout, fewer epochs). Only training rows are read."""
    metric, rows, frame = bench.config.metric, bench.rows["train"], bench.splits.train
    scores: dict[Setting, list[float]] = {s: [] for s in grid.settings()}
    for lr in grid.lrs:
        for dropout in grid.dropouts:
            config = dataclasses.replace(bench.config, lr=lr, dropout=dropout, epochs=max(grid.epochs), keep_best=False, patience=None)
            for fold, held_out in enumerate(folds):
                kept = np.setdiff1d(np.arange(len(rows)), held_out)
                fitted = train_contender(contender, bench, [rows[i] for i in kept], [rows[i] for i in held_out], config,
                                         frame.iloc[kept])[2]
                for epochs in grid.epochs:
                    scores[Setting(lr, epochs, dropout)].append(float(fitted.history[epochs - 1][f"val_{metric}"]))
                if progress:
                    print(f"{contender.text} lr {lr:g} dropout {dropout:g} fold {fold + 1}/{len(folds)}: {metric} by epoch "
                          + " ".join(f"{h[f'val_{metric}']:.3f}" for h in fitted.history), file=sys.stderr, flush=True)
    sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1
    chosen = max(scores, key=lambda s: sign * float(np.mean(scores[s])))
    return {"chosen": chosen, "folds": scores[chosen],
            "grid": [{**s.to_json(), "folds": v, "mean": float(np.mean(v))} for s, v in scores.items()]}


def refit(contender: Contender, setting: Setting, seed: int, bench: Bench, where: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Train on every training row with ``setting`` and score the test rows once: (run record, {"test": outputs})."""
    started = time.perf_counter()
    config = dataclasses.replace(bench.config, lr=setting.lr, epochs=setting.epochs, dropout=setting.dropout, seed=seed,
                                 keep_best=False, patience=None)
    # No validation rows: nothing is scored between epochs and the last is kept, as `selectune train --val-fraction 0`
    # does, so that command with this setting and seed trains the very same model.
    trained, prepared, fitted, accelerator, peak = train_contender(contender, bench, bench.rows["train"], [], config)
    loader = accelerator.prepare(DataLoader(bench.rows["test"], batch_size=config.eval_batch_size, collate_fn=bench.task.collate))
    outputs, loss = predict(trained, bench.task, loader, accelerator)
    weights = prepared.save(where)
    record = {"method": contender.text, "kind": contender.kind, "name": contender.name, "options": prepared.options,
              "lr": setting.lr, "epochs": setting.epochs, "dropout": setting.dropout, "seed": seed,
              "test": {**score(bench.task, outputs, bench.y["test"]), "loss": loss},
              "trainable_parameters": prepared.trainable_parameters, "total_parameters": prepared.total_parameters,
              "trainable_percent": prepared.trainable_percent, "steps": fitted.steps,
              "median_step_seconds": statistics.median(fitted.step_seconds), "train_seconds": fitted.train_seconds,
              "peak_memory_mb": None if peak.bytes_beyond_start is None else peak.bytes_beyond_start / 2**20,
              "delta_bytes": weights.stat().st_size, "delta_file": weights.name, "wall_seconds": time.perf_counter() - started,
              "train_config": vars(config)}
    return record, {"test": outputs}


@dataclass
class TuneConfig(_Lists):
    """What is tuned, how it is cross-validated, and how the recommendation is made."""
    methods: list[str] = option(["full", "bitfit", "head"], "methods with options (bitfit,lora:r=8,random:density=0.005); "
                                "PEFT baselines: lora, ia3, beft")
    cv: int = option(5, "folds of the training rows (stratified by label; grouped by --group-col when given)")
    grid: list[str] = option([], "grid overrides, e.g. lr=1e-3,3e-3 epochs=4,8 dropout=0,0.1 or bitfit.lr=1e-3 (default per method: "
                             "its default lr x 1/3, 1, 3; epochs 3, 5, 8; dropout 0, 0.1)")
    seeds: list[int] = option([0], "seeds of the refits on all training rows (mean and CI over them); folds and CV runs use the first")
    tolerance: float = option(0.01, "recommend the cheapest method within this of the best mean CV score (0.01 = 1 point on a 0-1 "
                              "metric, 1%% of the best value on another, e.g. RMSE)")
    prefer: str = option("parameters", "what \"cheapest\" means: parameters, time or memory")
    bootstrap: int = option(1000, "bootstrap resamples of the test rows for the confidence intervals")

    def validate(self) -> None:
        check_choice_settings(self)
        if self.cv < 2:
            raise ValueError(f"--cv must be at least 2 folds, got {self.cv}")
        parse_grid(self.grid)


# tune sets each run's learning rate, epochs, dropout and seed itself, and never keeps a "best" epoch on test.
TuneTraining = Annotated[TrainConfig, without("lr", "seed", "epochs", "dropout", "keep_best", "patience")]


def tune(train: str, *, out: str, tuning: TuneConfig = TuneConfig(), columns: ColumnsConfig = ColumnsConfig(),
         split: Annotated[SplitConfig, without("validation", "val_fraction")] = SplitConfig(), base: ModelConfig | None = None,
         training: TuneTraining = TrainConfig(), overwrite: bool = False, **settings: Any) -> dict[str, Any]:
    """Choose each method's learning rate, epochs and dropout by K-fold cross-validation on the training rows; refit; test once.

    train: training data file (csv, tsv, jsonl, parquet): every row takes part in the folds
    out: output directory (tune.json, test_outputs.npz, PNG plots); refused if it exists unless --overwrite
    overwrite: replace OUT if it exists
    """
    configs = with_settings("tune", {"tuning": tuning, "columns": columns, "split": split, "base": base or ModelConfig,
                                     "training": training}, settings)
    tuning, columns, split, base, training = (configs[k] for k in ("tuning", "columns", "split", "base", "training"))
    _check(out, overwrite, tuning, columns, split, training)
    contenders = parse_contenders(",".join(tuning.methods))
    overrides = parse_grid(tuning.grid)
    the_task = _task(columns, base.max_length)
    bench = _bench(train, the_task, split, base, training, tuning.seeds[0])
    label_col = the_task.label_col if the_task.outputs_probabilities else None
    folds = make_folds(bench.splits.train, tuning.cv, label_col, split.group_col, tuning.seeds[0])
    metric, progress = bench.config.metric, bench.config.progress
    target = Path(out)
    with staged_folder(target) as partial, tempfile.TemporaryDirectory(prefix="selectune-tune-", ignore_cleanup_errors=True) as scratch:
        chosen = {c.text: cross_validate(c, method_grid(c, overrides), bench, folds, progress) for c in contenders}
        runs, outputs = [], {}
        for c in contenders:  # the test rows are scored only now, after every choice is made
            for seed in tuning.seeds:
                record, outputs[(c.text, chosen[c.text]["chosen"].lr, seed)] = refit(c, chosen[c.text]["chosen"], seed, bench,
                                                                                      Path(scratch) / f"{len(runs)}")
                runs.append(record)
        summaries = [_summary(c, chosen[c.text], runs, outputs, bench, tuning) for c in contenders]
        tolerance = scaled_tolerance(summaries, metric, tuning.tolerance)
        advice = recommend(summaries, metric, tolerance["absolute"], tuning.prefer)
        advice.update({"split": f"{tuning.cv}-fold cross-validation of the training rows", "tolerance_rule": tolerance["rule"]})
        result = {"config": _resolved(train, tuning, columns, split, base, bench), "metric": metric,
                  "folds": [{"fold": i + 1, "held_out": len(f)} for i, f in enumerate(folds)],
                  "data_files": {role: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
                                 for role, p in (("train", train), ("test", split.test)) if p},
                  "split_protocol": bench.splits.protocol, "methods": summaries, "recommendation": advice, "runs": runs,
                  "majority_baseline": the_task.majority_baseline(the_task.label_ids(bench.splits.train), bench.y["test"]),
                  "environment": environment()}
        title = f"{Path(train).stem} ({len(bench.splits.train)} training rows, settings by {tuning.cv}-fold CV)"
        floor = (result["majority_baseline"] or {}).get(metric)
        result["plots"] = [p.name for p in plot_comparison(summaries, metric, partial, title, floor=floor)]
        atomic_write_json(partial / "tune.json", result)
        # Each refit's test outputs, for paired comparisons later ("METHOD|seedS": (N, C) or (N,); "y": the labels)
        np.savez(partial / "test_outputs.npz", y=bench.y["test"], **{f"{m}|seed{seed}": o["test"] for (m, _, seed), o in outputs.items()})
    result["out"] = str(target)
    return result


def _check(out: str, overwrite: bool, tuning: TuneConfig, columns: ColumnsConfig, split: SplitConfig, training: TrainConfig) -> None:
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    columns.validate()
    if split.test is None and not split.test_fraction:
        raise ValueError("tune scores the refitted models on test rows: give --test FILE or --test-fraction (e.g. 0.2)")
    tuning.validate()
    training.validate()


def _bench(train: str, task, split: SplitConfig, base: ModelConfig, training: TrainConfig, seed: int) -> Bench:
    """Every training row (no validation split: the folds validate) and the test rows, encoded once."""
    splits = load_splits(train, None, split.test, label_col=task.label_col, **task.data_options(), val_fraction=0,
                         test_fraction=split.test_fraction, group_col=split.group_col, seed=seed)
    check_splits(splits, id_col=split.group_col)  # leakage between the training and test rows stops here
    task.labels = splits.labels
    model_path = resolve_model(base.model)
    task.load_model(model_path, splits.train, hidden=base.hidden)  # gives the task its tokenizer
    rows = {role: task.examples(frame) for role, frame in (("train", splits.train), ("test", splits.test))}
    config = dataclasses.replace(training.for_task(task.default_metric), seed=seed)
    return Bench(task, model_path, splits, rows, {"test": task.label_ids(splits.test)}, config, base.hidden)


def _summary(contender: Contender, cv: dict[str, Any], runs: list[dict], outputs: dict, bench: Bench, tuning: TuneConfig) -> dict[str, Any]:
    """The method's row: compare's summary of its refits (test mean, CI) with the CV scores as its validation."""
    setting = cv["chosen"]
    mine = [{**r, "best_validation": float(np.mean(cv["folds"]))} for r in runs if r["method"] == contender.text]
    row = summarise(contender, setting.lr, mine, outputs, bench.y["test"], bench.task, bench.config.metric, tuning.bootstrap,
                    tuning.seeds[0])
    row.update({"epochs": setting.epochs, "dropout": setting.dropout, "setting": setting.text,
                "validation": {"mean": float(np.mean(cv["folds"])), "sd": float(np.std(cv["folds"], ddof=1)),
                               "folds": cv["folds"], "what": f"{len(cv['folds'])}-fold cross-validation"},
                "grid": cv["grid"]})
    return row


def _resolved(train: str, tuning: TuneConfig, columns: ColumnsConfig, split: SplitConfig, base: ModelConfig, bench: Bench) -> dict:
    return {"command": "selectune tune", "argv": sys.argv, "train": train, "test": split.test, "test_fraction": split.test_fraction,
            "group_col": split.group_col, "model": base.model, "model_path": bench.model_path, "max_length": base.max_length,
            "hidden": base.hidden_text, "label_col": columns.label_col, "text_col": columns.text_col, "feature_cols": columns.feature_cols,
            "task": bench.task.name, **dataclasses.asdict(tuning),
            "default_grid": {"lr_factors": list(DEFAULT_LR_FACTORS), "epochs": list(DEFAULT_EPOCHS), "dropout": list(DEFAULT_DROPOUTS)},
            "train_config": {k: v for k, v in vars(bench.config).items() if k not in ("lr", "seed", "epochs", "dropout")}}
