"""From runs to one row per method: the learning rate chosen on validation, mean ± sd over seeds, test CIs,
and subgroup scores.
"""
from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from selectune.compare.bootstrap import seed_mean_cis
from selectune.compare.contenders import Contender
from selectune.evaluate.metrics import HIGHER_IS_BETTER
from selectune.tasks import Task


def choose_lr(runs: list[dict[str, Any]], metric: str) -> float:
    """The learning rate with the best mean validation metric over seeds (its best epoch's); ties (a saturated small
    validation split) go to the lower mean validation loss. The test split is never read."""
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        by_lr.setdefault(run["lr"], []).append(run)
    sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1

    def rank(lr: float) -> tuple[float, float]:
        chosen = by_lr[lr]
        loss = np.mean([r.get("validation", {}).get("loss", np.nan) for r in chosen])
        return sign * float(np.mean([r["best_validation"] for r in chosen])), -float(np.nan_to_num(loss, nan=np.inf))
    return max(by_lr, key=rank)


def mean_sd(values: list[float]) -> dict[str, float | None]:
    return {"mean": float(np.mean(values)), "sd": float(statistics.stdev(values)) if len(values) > 1 else None}


def ci_metrics(task: Task, metric: str) -> list[str]:
    return task.ci_metrics(metric)


def summarise(contender: Contender, lr: float, runs: list[dict[str, Any]], outputs: dict, y_test: np.ndarray, task: Task,
              metric: str, resamples: int, bootstrap_seed: int) -> dict[str, Any]:
    """One row: the chosen learning rate's runs (one per seed) summarised; CIs of the seed-mean test metrics."""
    chosen = [r for r in runs if r["lr"] == lr]
    seeds = [r["seed"] for r in chosen]
    test_outputs = [outputs[(contender.text, lr, seed)]["test"] for seed in seeds]
    test: dict[str, dict[str, Any]] = {}
    for name in chosen[0]["test"]:
        if name == "n":
            continue
        values = [r["test"][name] for r in chosen]
        if any(v is None or not np.isfinite(v) for v in values):
            continue
        test[name] = mean_sd(values)
    wanted = [name for name in ci_metrics(task, metric) if name in test]
    cis = seed_mean_cis(y_test, test_outputs, wanted, classification=task.outputs_probabilities, resamples=resamples, seed=bootstrap_seed)
    for name, (low, high) in cis.items():
        test[name].update({"ci_low": low, "ci_high": high})
    memory = [r["peak_memory_mb"] for r in chosen]
    return {
        "method": contender.text, "kind": contender.kind, "options": chosen[0]["options"], "lr": lr,
        "lrs_tried": sorted({r["lr"] for r in runs}), "seeds": seeds,
        "validation": mean_sd([r["best_validation"] for r in chosen]), "test": test,
        "trainable_parameters": chosen[0]["trainable_parameters"], "total_parameters": chosen[0]["total_parameters"],
        "trainable_percent": chosen[0]["trainable_percent"],
        "wall_seconds": float(np.mean([r["wall_seconds"] for r in chosen])),
        "train_seconds": float(np.mean([r["train_seconds"] for r in chosen])),
        "median_step_seconds": float(np.median([r["median_step_seconds"] for r in chosen])),  # median over seeds of each run's median
        "peak_memory_mb": None if any(m is None for m in memory) else float(np.median(memory)),
        "delta_bytes": chosen[0]["delta_bytes"], "delta_file": chosen[0]["delta_file"],
    }


def group_metric(task: Task, metric: str, y: np.ndarray, out: np.ndarray) -> float:
    """``metric`` on a subgroup's rows, as the task scores a subgroup (``Task.subgroup_score``)."""
    return task.subgroup_score(metric, y, out)


def subgroup_scores(outputs_per_seed: list[np.ndarray], y: np.ndarray, groups: dict[str, np.ndarray], task: Task,
                    metric: str) -> dict[str, dict[str, dict[str, Any]]]:
    """column -> value -> {"n": rows, "score": mean over seeds of ``metric`` on those rows}."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for column, values in groups.items():
        table[column] = {}
        for value in sorted(set(values)):
            rows = values == value
            scores = [group_metric(task, metric, y[rows], out[rows]) for out in outputs_per_seed]
            table[column][value] = {"n": int(rows.sum()), "score": float(np.mean(scores))}
    return table
