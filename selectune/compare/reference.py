"""The rows of a benchmark JSON that `selectune summary --reference` prints beside training runs, and what
`selectune compare`'s rule recommends from them.

Two shapes are read:
- one task, ``chosen`` per method (``benchmarks/drug_reviews.py``): the setting chosen on validation over seeds;
- several tasks, ``tasks[TASK]["methods"]`` per method (``benchmarks/recipe.py``): the setting chosen by K-fold
  cross-validation, the mean over seeds of its refits with a 95% CI, and ``bitfit_minus`` (paired differences).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectune.compare.recommend import gap_text, recommend, reference_recommendation, scaled_tolerance


@dataclass
class Reference:
    rows: list[dict[str, Any]]
    """Table rows: model, source, the test metrics, epochs, lr, dropout, trainable %, ..."""
    recommendation: dict[str, Any] | None
    seed_means: bool = False
    """Rows are means over seeds (compare BitFit with them among themselves, not with one run)."""
    bitfit_minus: dict[str, Any] = field(default_factory=dict)
    """method -> metric -> {"value", "ci_low", "ci_high"}: BitFit minus that method, paired over the test rows."""
    seed_rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    """method -> {"setting", "seeds", "macro_f1_by_seed"}: what a run with the same setting and seed should reproduce."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """The settings every row shares (batch size, max length, class weight, warmup, new-parameter lr)."""


def dropout_text(value: float | None) -> str:
    return "model" if value is None else f"{value:g}"  # None: the model's own dropout


def read_reference(path: str, task: str | None = None, default_task: str | None = None) -> Reference:
    """The rows of the benchmark JSON at ``path``; ``task`` picks one task of a multi-task JSON (recipe.json), by
    default ``default_task`` (the runs' label column)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--reference {path} not found; give a benchmark JSON such as benchmarks/results/recipe.json")
    try:
        ref = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--reference {path} is not JSON ({error}); give a benchmark JSON such as benchmarks/results/recipe.json") from None
    try:
        if isinstance(ref, dict) and "tasks" in ref:
            return _recipe(ref, file.name, task or default_task)
        if isinstance(ref, dict) and "chosen" in ref:
            if task is not None:
                raise ValueError(f"--reference-task {task}: {path} holds one task (its 'chosen' rows); drop --reference-task")
            return _chosen(ref, file.name)
    except (KeyError, TypeError) as error:
        raise ValueError(f"--reference {path} is incomplete (a row lacks {error}); give a JSON written by a benchmarks/ script, "
                         "e.g. benchmarks/results/recipe.json") from None
    raise ValueError(f"--reference {path} is not a benchmark JSON with 'chosen' or 'tasks' rows (e.g. benchmarks/results/recipe.json)")


def _chosen(ref: dict[str, Any], name: str) -> Reference:
    rows = [{"model": method, "source": name, "accuracy": r["test_accuracy"], "macro_f1": r["test_macro_f1"],
             "epochs": ref.get("recipe", {}).get("epochs", ""), "lr": f"{r['lr']:g}", "dropout": dropout_text(r.get("dropout")),
             "trainable %": f"{r['trainable_percent']:.3f}", "delta KB": f"{r['delta_bytes'] / 1000:.0f}"}
            for method, r in ref["chosen"].items()]
    return Reference(rows, reference_recommendation(ref))


def _recipe(ref: dict[str, Any], name: str, task: str | None) -> Reference:
    tasks = ref["tasks"]
    if task not in tasks:
        raise ValueError(f"{name} has no task {task!r} (its tasks: {', '.join(tasks)}); name one with --reference-task")
    methods = tasks[task]["methods"]
    rows, candidates, seed_rows = [], [], {}
    for method, r in methods.items():
        test, setting, n = r["test"], r["setting"], len(r["test_macro_f1_by_seed"])
        f1 = test["macro_f1"]
        rows.append({"model": method, "source": f"{name} {task}: {n}-seed mean", "accuracy": test["accuracy"]["mean"],
                     "macro_f1": f1["mean"], "95% CI": f"[{f1['ci_low']:.3f}, {f1['ci_high']:.3f}]",
                     **({"auroc": test["auroc"]["mean"]} if "auroc" in test else {}), "epochs": setting["epochs"],
                     "lr": f"{setting['lr']:g}", "dropout": dropout_text(setting["dropout"]),
                     "trainable %": f"{r['trainable_percent']:.3f}", "train s": f"{r['train_seconds']:.0f}"})
        # compare's rule on the cross-validated scores (the test rows take no part), cheapest by trainable parameters
        candidates.append({"method": method, "validation": {"mean": r["cv"]["mean"]}, "trainable_parameters": r["trainable_parameters"],
                           "median_step_seconds": None, "peak_memory_mb": None})
        seed_rows[method] = {"setting": setting, "seeds": ref.get("recipe", {}).get("seeds", list(range(n))),
                             "macro_f1_by_seed": r["test_macro_f1_by_seed"]}
    advice = recommend(candidates, "macro_f1", scaled_tolerance(candidates, "macro_f1", 0.01)["absolute"]) if candidates else None
    if advice:
        advice["split"] = f"{ref.get('recipe', {}).get('cv', 'K')}-fold cross-validation of the training rows"
    return Reference(rows, advice, seed_means=True, bitfit_minus=tasks[task].get("bitfit_minus", {}), seed_rows=seed_rows,
                     recipe=ref.get("recipe", {}))


# The recipe's shared settings a run must have too (train_config keys), beside max_length
SHARED = ("batch_size", "class_weight", "warmup_ratio", "new_lr")


def reproduction_notes(runs: list[dict[str, Any]], reference: Reference) -> list[str]:
    """For each run of a method the reference has: whether it has that row's setting (lr, epochs, dropout, every training
    row, one of its seeds, the recipe's shared settings) and, if so, whether its test macro-F1 equals that seed's."""
    notes = []
    for run in runs:
        row = reference.seed_rows.get(run["method"])
        if row is None or run.get("macro_f1") is None:
            continue
        setting, tc = row["setting"], run["train_config"]
        shared = all(tc.get(k) == reference.recipe[k] for k in SHARED if k in reference.recipe)
        same = (abs(tc["lr"] - setting["lr"]) < 1e-12 and tc["epochs"] == setting["epochs"] and tc.get("dropout") == setting["dropout"]
                and run["validation_rows"] == 0 and tc["seed"] in row["seeds"] and shared
                and run["max_length"] == reference.recipe.get("max_length", run["max_length"]))
        if not same:
            shared_text = "".join(f", {k.replace('_', ' ')} {reference.recipe[k]}" for k in ("batch_size", "max_length", "class_weight")
                                  if k in reference.recipe)
            notes.append(f"{run['source']} is not the reference's {run['method']} setting (lr {setting['lr']:g}, {setting['epochs']} "
                         f"epochs, dropout {setting['dropout']:g}, every training row{shared_text}), so it is not a row of it.")
            continue
        expected = row["macro_f1_by_seed"][row["seeds"].index(tc["seed"])]
        verdict = "reproduces" if abs(run["macro_f1"] - expected) < 5e-4 else "does NOT reproduce"
        notes.append(f"{run['source']} {verdict} the reference's {run['method']} seed-{tc['seed']} run: test macro_f1 "
                     f"{run['macro_f1']:.4f} here, {expected:.4f} there.")
    return notes


def paired_text(reference: Reference, method: str, metric: str = "macro_f1") -> str:
    """``BitFit − full −2.5 pt, 95% CI [−5.9, +1.2]`` from the reference's paired differences; '' without them."""
    d = reference.bitfit_minus.get(method, {}).get(metric)
    if not d:
        return ""
    return (f"BitFit − {method} {100 * d['value']:+.1f} pt, 95% CI [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] "
            f"(paired over the same test rows)")


def recommendation_text(advice: dict[str, Any] | None) -> str:
    if not advice:
        return ""
    return (f"selectune compare on the reference rows ({advice['split']}, tolerance "
            f"{gap_text(advice['metric'], advice['tolerance'])}) would recommend {advice['recommended']}: {advice['reasoning']}")
