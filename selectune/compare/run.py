"""``selectune compare``: every method on the same data, splits, seeds and epoch budget, through the same loop.

Reads top to bottom: check the settings -> load and split the data once -> for each method, learning rate and
seed, load a fresh base, prepare the method (selective ``select`` or a PEFT wrapper), ``fit`` (keep-best on
validation), score validation and test, save the delta/adapter to measure it -> choose each method's learning
rate on validation -> summarise over seeds with bootstrap CIs -> recommend -> write JSON, plots, table.

Everything is written to a partial folder and renamed into place at the end.
"""
from __future__ import annotations

import dataclasses
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from selectune.compare.bench import Bench, train_contender
from selectune.compare.contenders import Contender, parse_contenders, prepare
from selectune.compare.plots import plot_comparison
from selectune.compare.recommend import check_choice_settings, recommend, scaled_tolerance
from selectune.config import (ColumnsConfig, ModelConfig, PreprocessingConfig, SplitConfig, TrackingConfig, TrainConfig, _Lists, option,
                              with_settings, without)
from selectune.compare.summary import choose_lr, subgroup_scores, summarise
from selectune.compare.tune import TuneConfig, tune
from selectune.data import DataError
from selectune.data.check_command import check_splits
from selectune.fingerprint import file_sha256
from selectune.io import atomic_write_json, staged_folder
from selectune.models import resolve_model
from selectune.train.loop import predict, score
from selectune.train.run import _split, _task, environment
from selectune.tasks import Task
from selectune.tracking import check as check_tracking, log as log_to_mlflow
from selectune.tracking.logs import compare_log

DEFAULT_METHODS = "full,bitfit,bitfit:roles=query+mlp_in,layernorm,head,random,pafi,fish,lt_sft,lora,ia3,beft"
LR_SWEEP_FACTORS = (1 / 3, 1.0, 3.0)  # times each method's default learning rate


@dataclass
class CompareConfig(_Lists):
    """What is compared, and how the recommendation is made."""
    methods: list[str] = option(DEFAULT_METHODS.split(","), "methods; options follow their method "
                                "(bitfit:roles=query+mlp_in,lora:r=16,ia3); PEFT baselines: lora, ia3, beft")
    seeds: list[int] = option([0], "training seeds (e.g. 0,1,2): mean ± sd over them; splits are made once, with the first")
    lr_sweep: bool = option(False, "try each method's default learning rate x 1/3, 1, 3 and keep the best on validation (3x the runs)")
    train_limit: int | None = option(None, "train on a stratified random subset of this many training rows (validation and test unchanged)")
    group_cols: list[str] = option([], "columns whose subgroups the recommendation checks (on validation) and the JSON reports")
    tolerance: float = option(0.01, "recommend the cheapest method whose validation metric is within this of the best (0.01 = 1 "
                              "point on a 0-1 metric such as macro_f1; on RMSE/MAE 1%% of the best value)")
    prefer: str = option("parameters", "what \"cheapest\" means: parameters (trainable), time (median step) or memory (peak beyond weights)")
    min_group_n: int = option(10, "subgroups with fewer validation rows are listed but not judged")
    bootstrap: int = option(1000, "bootstrap resamples of the test rows for the confidence intervals")
    keep_deltas: bool = option(False, "keep every run's delta/adapter under OUT/runs/ (default: measured, then deleted)")
    cv: int | None = option(None, "choose each method's lr, epochs and dropout by K-fold cross-validation of the training rows "
                            "instead of a validation split (as `selectune tune`; --epochs and --dropout are then the grid's)")
    grid: list[str] = option([], "with --cv: grid overrides, e.g. lr=1e-3,3e-3 epochs=4,8 dropout=0,0.1 (see `selectune tune`)")

    def validate(self) -> None:
        check_choice_settings(self)


# compare sets each run's learning rate (the method's default, or the sweep) and seed (--seeds) itself.
CompareTraining = Annotated[TrainConfig, without("lr", "seed")]


def compare(train: str, *, out: str, comparison: CompareConfig = CompareConfig(), columns: ColumnsConfig = ColumnsConfig(),
            split: SplitConfig = SplitConfig(), base: ModelConfig | None = None, training: CompareTraining = TrainConfig(),
            preprocessing: PreprocessingConfig = PreprocessingConfig(), tracking: TrackingConfig = TrackingConfig(), overwrite: bool = False,
            **settings: Any) -> dict[str, Any]:
    """Compare methods (selective and PEFT LoRA/IA3/BEFT) on the same data, splits, seeds and epochs; recommend one.

    train: training data file (csv, tsv, jsonl, parquet)
    out: output directory (compare.json, PNG plots); refused if it exists unless --overwrite
    overwrite: replace OUT if it exists

    Python callers may give any field of the configs flat: ``compare(path, model="minilm", out="cmp", seeds=[0, 1])``.
    The tabular preprocessing flags (``--impute``, ``--categorical-cols``) of a new base are fitted once, on the
    training split, and every method (PEFT baselines included) reads the same prepared inputs.
    """
    # ---- check every setting before reading data --------------------------------------------------------------
    configs = with_settings("compare", {"comparison": comparison, "columns": columns, "split": split, "base": base or ModelConfig,
                                        "training": training, "preprocessing": preprocessing, "tracking": tracking}, settings)
    comparison, columns, split, base, training = (configs[k] for k in ("comparison", "columns", "split", "base", "training"))
    target = Path(out)
    _check_settings(out, overwrite, comparison, columns, split, training)
    if comparison.cv is not None:
        _check_cv_takes(configs["preprocessing"], configs["tracking"])
    check_tracking(configs["tracking"])  # mlflow installed and its server answering, before any training
    if comparison.cv is not None:
        return tune(train, out=out, tuning=_tuning(comparison, split), columns=columns, split=split, base=base, training=training,
                    overwrite=overwrite)
    the_task = _task(columns, base.max_length)
    contenders = parse_contenders(",".join(comparison.methods), the_task.method_defaults)
    the_task.use_preprocessing(configs["preprocessing"], base.model)  # a saved base brings its own
    config = training.for_task(the_task.default_metric)
    metric = config.metric

    # ---- data: loaded, split (and subset) once; every run sees the same rows; every method prepared once -------
    splits, checks = _load(train, the_task, split, comparison, config.progress)
    the_task.labels = splits.labels
    model_path = resolve_model(base.model)
    _prepare_each(contenders, the_task, model_path, splits, base.hidden)
    rows = {role: the_task.examples(frame) for role, frame in (("train", splits.train), ("validation", splits.validation),
                                                                 ("test", splits.test))}
    y = {"validation": the_task.label_ids(splits.validation), "test": the_task.label_ids(splits.test)}
    bench = Bench(the_task, model_path, splits, rows, y, dataclasses.replace(config, lr=None, seed=0), base.hidden)  # each run: its own

    with staged_folder(target) as partial, tempfile.TemporaryDirectory(prefix="selectune-compare-", ignore_cleanup_errors=True) as scratch:
        runs, outputs = _run_all(contenders, comparison, bench, partial / "runs" if comparison.keep_deltas else Path(scratch))

        # ---- summarise: learning rate on validation, seeds -> mean ± sd, test CIs --------------------------------
        summaries, subgroups, advice = _summarise_all(contenders, comparison, bench, runs, outputs)
        baseline = the_task.majority_baseline(the_task.label_ids(splits.train), y["test"])
        resolved = {"command": "selectune compare", "argv": sys.argv, "train": train, "validation": split.validation, "test": split.test,
                    "model": base.model, "model_path": model_path, "methods": [c.text for c in contenders], "label_col": columns.label_col,
                    "text_col": columns.text_col, "feature_cols": columns.feature_cols, "task": the_task.name, "val_fraction": split.val_fraction,
                    "test_fraction": split.test_fraction, "group_col": split.group_col, "group_cols": comparison.group_cols,
                    "train_limit": comparison.train_limit, "seeds": comparison.seeds, "lr_sweep": comparison.lr_sweep,
                    "lr_sweep_factors": list(LR_SWEEP_FACTORS) if comparison.lr_sweep else None, "max_length": base.max_length,
                    "hidden": base.hidden_text, "preprocessing": the_task.metadata().get("preprocessing"), "metric": metric, "tolerance": comparison.tolerance, "prefer": comparison.prefer,
                    "min_group_n": comparison.min_group_n, "bootstrap_resamples": comparison.bootstrap,
                    "train_config": {k: v for k, v in vars(bench.config).items() if k not in ("lr", "seed")}}
        data_files = {role: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
                      for role, p in (("train", train), ("validation", split.validation), ("test", split.test)) if p}
        result = {"config": resolved, "data_files": data_files, "split_protocol": splits.protocol, "metric": metric,
                  "data_checks": checks.to_json(), "majority_baseline": baseline, "methods": summaries, "recommendation": advice, "subgroups": subgroups,
                  "runs": runs, "environment": environment()}
        title = f"{Path(train).stem} ({splits.protocol['sizes']['train']} training rows, {config.epochs} epochs)"
        plots = plot_comparison(summaries, metric, partial, title, floor=baseline[metric] if baseline and metric in baseline else None)
        result["plots"] = [p.name for p in plots]
        atomic_write_json(partial / "compare.json", result)
    result["out"] = str(target)
    run_id = log_to_mlflow(configs["tracking"], compare_log, target)  # after OUT is complete: a logging failure leaves it whole
    return {**result, "mlflow_run_id": run_id} if run_id else result


def _check_settings(out: str, overwrite: bool, comparison: CompareConfig, columns: ColumnsConfig, split: SplitConfig,
                    training: TrainConfig) -> None:
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"output directory {out} already exists; choose another --out or pass --overwrite")
    columns.validate()
    if training.class_weight not in (None, "balanced"):
        raise ValueError(f"--class-weight must be 'balanced' or omitted, got {training.class_weight!r}")
    if split.test is None and not split.test_fraction:
        raise ValueError("compare reports test metrics: give --test FILE or --test-fraction (e.g. 0.2)")
    comparison.validate()
    if comparison.cv is None and split.validation is None and split.val_fraction == 0:
        raise ValueError("compare chooses each method's learning rate on validation rows: give --val-fraction above 0, a "
                         "--validation FILE, or --cv K (settings chosen by cross-validation of every training row)")
    if training.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {training.epochs}")
    training.validate()


def _check_cv_takes(preprocessing: PreprocessingConfig, tracking: TrackingConfig) -> None:
    """``compare --cv`` runs ``tune``, which does not fit tabular preprocessing or log to MLflow yet: refuse those flags
    rather than drop them silently."""
    if preprocessing.requested:
        raise ValueError("compare --cv does not take --impute/--missing-indicators/--categorical-cols yet: run compare "
                         "without --cv, or train a base with those flags and compare on it (--model RUN/model)")
    if tracking.mlflow_uri:
        raise ValueError("compare --cv does not log to MLflow yet: drop --mlflow-uri, or run compare without --cv")


def _tuning(comparison: CompareConfig, split: SplitConfig) -> TuneConfig:
    """``compare --cv K`` as ``tune``'s settings; the options that only mean something with a validation split are refused."""
    given = [flag for flag, on in (("--validation", split.validation), ("--lr-sweep", comparison.lr_sweep),
                                   ("--train-limit", comparison.train_limit is not None), ("--group-cols", comparison.group_cols),
                                   ("--keep-deltas", comparison.keep_deltas)) if on]
    if given:
        raise ValueError(f"--cv chooses every setting by cross-validation of the training rows; drop {', '.join(given)}")
    return TuneConfig(methods=comparison.methods, cv=comparison.cv, grid=comparison.grid, seeds=comparison.seeds,
                      tolerance=comparison.tolerance, prefer=comparison.prefer, bootstrap=comparison.bootstrap)


def _prepare_each(contenders: list[Contender], task: Task, model_path: str, splits, hidden: list[int]) -> None:
    """Prepare every method once on a fresh base before any training, so a method that cannot apply to this model
    (a role it lacks, a PEFT target it lacks) stops the comparison now, not an hour in."""
    for i, contender in enumerate(contenders):
        if i == 0 or not contender.needs_data:  # the first load also gives the task its tokenizer
            loaded = task.load_model(model_path, splits.train, hidden=hidden)
            if not contender.needs_data:
                prepare(loaded.model, contender, new_parameters=loaded.new_parameters)


def _run_all(contenders: list[Contender], comparison: CompareConfig, bench: Bench, runs_dir: Path):
    """Every method x learning rate x seed; (run records, outputs by (method, lr, seed))."""
    metric = bench.config.metric
    runs: list[dict[str, Any]] = []
    outputs: dict[tuple[str, float, int], dict[str, np.ndarray]] = {}
    for contender in contenders:
        factors = LR_SWEEP_FACTORS if comparison.lr_sweep else (1.0,)
        for lr in [float(f"{contender.default_lr * f:.3g}") for f in factors]:
            for seed in comparison.seeds:
                run, run_outputs = _run_one(contender, lr, seed, bench, runs_dir / _run_name(contender.text, lr, seed))
                runs.append(run)
                outputs[(contender.text, lr, seed)] = run_outputs
                if bench.config.progress:
                    print(f"{contender.text} lr {lr:g} seed {seed}: validation {metric} {run['validation'][metric]:.4f}, "
                          f"test {metric} {run['test'][metric]:.4f} ({run['wall_seconds']:.0f} s)", file=sys.stderr, flush=True)
    return runs, outputs


def _summarise_all(contenders: list[Contender], comparison: CompareConfig, bench: Bench, runs, outputs):
    """(per-method summaries, subgroup scores per role, the recommendation)."""
    metric, seeds, y, splits = bench.config.metric, comparison.seeds, bench.y, bench.splits
    chosen_lr = {c.text: choose_lr([r for r in runs if r["method"] == c.text], metric) for c in contenders}
    summaries = [summarise(c, chosen_lr[c.text], [r for r in runs if r["method"] == c.text], outputs, y["test"], bench.task,
                           metric, comparison.bootstrap, seeds[0]) for c in contenders]
    groups = {role: {col: frame[col].astype(str).to_numpy() for col in comparison.group_cols}
              for role, frame in (("validation", splits.validation), ("test", splits.test))}
    subgroups = {role: {s["method"]: subgroup_scores([outputs[(s["method"], s["lr"], seed)][role] for seed in seeds],
                                                     y[role], groups[role], bench.task, metric) for s in summaries}
                 for role in ("validation", "test")} if comparison.group_cols else {}
    tolerance = scaled_tolerance(summaries, metric, comparison.tolerance)
    advice = recommend(summaries, metric, tolerance["absolute"], comparison.prefer, subgroups.get("validation"), comparison.min_group_n)
    advice["tolerance_rule"] = tolerance["rule"]
    return summaries, subgroups, advice


def _run_one(contender: Contender, lr: float, seed: int, bench: Bench, where: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One training run; returns its JSON record and its (validation, test) outputs."""
    task, rows, y = bench.task, bench.rows, bench.y
    started = time.perf_counter()
    config = TrainConfig(**{**vars(bench.config), "lr": lr, "seed": seed})
    trained, prepared, fitted, accelerator, peak = train_contender(contender, bench, rows["train"], rows["validation"], config)
    outputs, metrics = {}, {}
    for role in ("validation", "test"):
        loader = accelerator.prepare(DataLoader(rows[role], batch_size=config.eval_batch_size, collate_fn=task.collate))
        outputs[role], loss = predict(trained, task, loader, accelerator)
        metrics[role] = {**score(task, outputs[role], y[role]), "loss": loss, **task.loss_metrics(loss)}
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


def _load(train: str, task: Task, split: SplitConfig, comparison: CompareConfig, progress: bool):
    """The data, loaded, split (and subset) once, with the first seed; every run sees the same rows."""
    splits = _split(train, task, split, comparison.seeds[0])
    for column in comparison.group_cols:
        for role, frame in (("validation", splits.validation), ("test", splits.test)):
            if column not in frame.columns:
                raise DataError(f"--group-cols names {column!r}, which the {role} data lacks; its columns are "
                                f"{', '.join(map(str, frame.columns))}")
    # The same data checks as `selectune train`: leakage between the splits stops here, before any training.
    checks = check_splits(splits, id_col=split.group_col, group_cols=comparison.group_cols or None)
    if progress:
        for warning in checks.warnings:
            print(f"selectune compare: warning: {warning.message}", file=sys.stderr)
    if comparison.train_limit is not None:
        label_col = task.label_col if task.outputs_probabilities else None  # stratify classes, not values
        splits.train = _subset(splits.train, comparison.train_limit, label_col, comparison.seeds[0])
        splits.protocol["train_limit"] = comparison.train_limit
        splits.protocol["sizes"]["train"] = len(splits.train)
    return splits, checks


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
