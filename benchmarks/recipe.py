"""The recipe's headline evidence (issue 14): seven methods on drug-review rating and condition, settings chosen by
cross-validation, five seeds, paired CIs of BitFit against each other method.

Methods: full, BitFit, head, `random` 0.5% (a random sparse mask of 0.5% of the pretrained weights plus the head),
PEFT LoRA r=8, BEFT and IA3, on the bundled all-MiniLM-L6-v2 read by mean pooling (`minilm-mean`, a plain
BertForSequenceClassification). Per task and method, `selectune tune` chooses the learning rate, epochs and dropout by
5-fold cross-validation of the training file (stratified by label, the same seeded folds for every method; the test
file takes no part), refits on all training rows with seeds 0-4 and scores the test file once per seed. Written per
method: the chosen setting with its fold scores, the seed-mean test macro-F1 with its 95% bootstrap CI over test rows,
and BitFit - method as a paired bootstrap over the same resampled test rows of the seed means; then the issue's goals,
met or not. Each method is its own `tune` call (same folds: same data and seed), so a rerun skips methods already in
the JSON for the same recipe and data (benchmarks/reuse.py). The load average is recorded (benchmarks/machine_load.py).

Cost on 2 cores, and what it asked of the recipe: an epoch over the 599 rating reviews at 128 tokens takes ~21-35 s
(BitFit to full), so tune's default (5 folds x 3 learning rates x 2 dropouts, 8 epochs per run, then 5 refits) would
need ~27 h for seven methods on both tasks. The recipe here therefore uses 3 folds and fixes dropout at 0 (tune still
chooses lr x 1/3, 1, 3 and epochs 3, 5, 8; dropout 0 was BitFit's best test setting in drug_reviews.json and is the
same for every method): ~16 min per method on condition (289 training reviews) and ~30 min on rating, ~5.5 h in all.
The JSON is rewritten after every method, and a rerun skips the methods already in it for the same recipe and data,
so the evidence can be gathered over several sittings; each method records the load average it ran under.

    python benchmarks/recipe.py                      # both tasks, seven methods, 5 seeds (~5.5 h on 2 CPU cores)
    python benchmarks/recipe.py --tasks condition --methods bitfit,full
    python benchmarks/recipe.py --quick --busy-ok 'smoke run'   # tiny sizes: a minute or two, checks the plumbing
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

# `python benchmarks/recipe.py` as the README writes it: this repo's selectune, not another install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished, machine_load
from selectune.compare.bootstrap import paired_seed_mean_differences
from selectune.compare.tune import tune
from selectune.data import export_bundled
from selectune.io import atomic_write_json
from selectune.train.run import environment

from compare_drug_reviews import task_files as drug_review_task  # benchmarks/, beside this script
from recipe_goals import BITFIT, METHODS, TASKS, goals
from reuse import data_sha256, reusable

RESULTS = Path(__file__).resolve().parent / "results"
RECIPE = {"model": "minilm-mean", "cv": 3, "grid": ["dropout=0"], "seeds": [0, 1, 2, 3, 4], "batch_size": 16, "max_length": 128,
          "class_weight": "balanced", "warmup_ratio": 0.1, "metric": "macro_f1", "new_lr": 1e-2, "bootstrap": 2000}
# --quick: the plumbing on tiny sizes (a test runs it with a tiny model)
QUICK = {**RECIPE, "cv": 2, "grid": ["epochs=1", "dropout=0"], "seeds": [0, 1], "max_length": 24, "bootstrap": 200}
QUICK_ROWS = {"train": 8, "test": 4}  # per class


def task_files(task: str, files: dict[str, str], work: Path, quick: bool) -> tuple[str, str, str, str]:
    """(train path, test path, label column, description) of ``task``; --quick keeps a few rows per class."""
    train, test, label, note = drug_review_task(task, files, work)
    if not quick:
        return train, test, label, note
    paths, keep = [], pd.read_csv(train)[label].value_counts().index[:3]  # the training file's three largest classes
    for role, path in (("train", train), ("test", test)):
        frame = pd.read_csv(path)
        small = frame[frame[label].isin(keep)].groupby(label, sort=True).head(QUICK_ROWS[role])
        paths.append(str(work / f"quick-{task}-{role}.csv"))
        small.to_csv(paths[-1], index=False)
    return paths[0], paths[1], label, note + " (--quick: 3 classes, a few rows)"


def run_method(method: str, train: str, test: str, label: str, recipe: dict, model: str, work: Path) -> dict:
    """One `tune` call: the method's chosen setting, fold scores, seed-mean test scores with CIs, and its test outputs."""
    out = work / f"tune-{Path(train).stem}-{len(list(work.iterdir()))}"
    result = tune(train, test=test, model=model, text_col="review", label_col=label, methods=[method], cv=recipe["cv"],
                  grid=recipe["grid"], seeds=recipe["seeds"], batch_size=recipe["batch_size"], max_length=recipe["max_length"],
                  class_weight=recipe["class_weight"], warmup_ratio=recipe["warmup_ratio"], metric=recipe["metric"],
                  new_lr=recipe["new_lr"], bootstrap=recipe["bootstrap"], out=str(out), progress=False)
    summary = result["methods"][0]
    with np.load(out / "test_outputs.npz") as saved:
        outputs = [saved[f"{method}|seed{seed}"].round(6).tolist() for seed in recipe["seeds"]]
        y = saved["y"].tolist()
    return {"method": method, "setting": {"lr": summary["lr"], "epochs": summary["epochs"], "dropout": summary["dropout"]},
            "cv": summary["validation"], "grid": summary["grid"], "test": summary["test"],
            "test_macro_f1_by_seed": [r["test"]["macro_f1"] for r in result["runs"]],
            "trainable_parameters": summary["trainable_parameters"], "trainable_percent": summary["trainable_percent"],
            "train_seconds": summary["train_seconds"], "sizes": result["split_protocol"]["sizes"],
            "majority_baseline": result["majority_baseline"], "test_labels": y, "test_outputs": outputs}


def paired(methods: dict[str, dict], recipe: dict) -> dict:
    """BitFit - each other method, macro-F1 and accuracy of the seed means, paired bootstrap over test rows."""
    if BITFIT not in methods:
        return {}
    y = np.array(methods[BITFIT]["test_labels"])
    outputs = {m: [np.array(o) for o in r["test_outputs"]] for m, r in methods.items()}
    return paired_seed_mean_differences(y, outputs, BITFIT, ["macro_f1", "accuracy"], classification=True,
                                        resamples=recipe["bootstrap"], seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; `;` between methods when an option has commas")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (3 classes, a few rows, 2 folds, 1 epoch, 2 seeds)")
    parser.add_argument("--model", default=None, help="base model (default: minilm-mean; a test passes a tiny one with --quick)")
    parser.add_argument("--out", default=str(RESULTS / "recipe.json"))
    add_load_flags(parser)
    args = parser.parse_args()
    load = check_machine(args)  # before anything is loaded or timed
    recipe = dict(QUICK if args.quick else RECIPE)
    recipe["model"] = args.model or recipe["model"]
    with tempfile.TemporaryDirectory(prefix="recipe-", ignore_cleanup_errors=True) as scratch:
        run_tasks(args, recipe, Path(scratch), load)


def run_tasks(args: argparse.Namespace, recipe: dict, work: Path, load: dict) -> None:
    """Each task, each method not yet in the JSON for this recipe and data; the JSON rewritten after every method."""
    files = export_bundled("drug-reviews", str(work / "data"))
    out, data = Path(args.out), data_sha256(files)
    tasks = reusable(out, {**recipe, "quick": args.quick}, data).get("tasks", {})
    methods_wanted = args.methods.split(";") if ";" in args.methods else [m for m in args.methods.split(",") if m]
    for task in args.tasks.split(","):
        train, test, label, note = task_files(task, files, work, args.quick)
        done = tasks.get(task, {}).get("methods", {})
        for method in methods_wanted:
            if method in done:
                continue  # the same recipe and data: its row stands
            started = machine_load(threshold=float("inf")) if method != methods_wanted[0] else load
            done[method] = run_method(method, train, test, label, recipe, recipe["model"], work)
            done[method]["machine_load"] = finished(started)  # per method: a JSON filled over several sittings
            row = done[method]
            print(f"{task} {method}: {row['setting']} CV {row['cv']['mean']:.3f}, test macro-F1 {row['test']['macro_f1']['mean']:.3f} "
                  f"[{row['test']['macro_f1']['ci_low']:.3f}, {row['test']['macro_f1']['ci_high']:.3f}]", flush=True)
            tasks[task] = {"task": note, "methods": done, "bitfit_minus": paired(done, recipe)}
            write(out, recipe, args.quick, data, tasks, load)


def write(out: Path, recipe: dict, quick: bool, data: dict, tasks: dict, load: dict) -> None:
    """The JSON after every method, so an interrupted run keeps what it finished."""
    atomic_write_json(out, {"benchmark": "recipe", "model": f"{recipe['model']} (all-MiniLM-L6-v2 read by mean pooling)",
                            "recipe": {**recipe, "quick": quick}, "data_sha256": data, "tasks": tasks, "goals": goals(tasks, len(recipe["seeds"])),
                            "machine_load": finished(load), "environment": environment()})


if __name__ == "__main__":
    main()
