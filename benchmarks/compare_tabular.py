"""A tabular base -> update task: a base MLP trained (full) on the historical part of the breast-cancer data,
then updated on the new part by every method through `selectune compare`.

The bundled export splits the 569 tumours by row order: old.csv (the first 300) stands in for historical data,
new.csv (the other 269) for data from after the base was made. The new part is split once (seeded, stratified)
into update-train and update-test files; the base without any update is scored on the same test rows.

    python benchmarks/compare_tabular.py      # ~2 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import tempfile
import sys
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader

# `python benchmarks/compare_tabular.py` as the README writes it: this repo's selectune, not another install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished
from selectune.compare import compare
from selectune.data import export_bundled
from selectune.io import atomic_write_json
from selectune.data.bundled import BUNDLED
from selectune.train.loop import TrainConfig, make_accelerator, predict, score
from selectune.train.run import environment, train
from selectune.tasks import TabularClassification

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = "full,bitfit,layernorm,head,lora,ia3"
BASE = {"method": "full", "lr": 1e-3, "epochs": 30, "batch_size": 32, "hidden": "64,64", "seed": 0}
UPDATE = {"epochs": 20, "batch_size": 16, "seeds": "0,1,2", "lr_sweep": True, "val_fraction": 0.2, "metric": "macro_f1"}
TEST_FRACTION = 0.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--out", default=str(RESULTS / "compare_tabular.json"))
    add_load_flags(parser)
    args = parser.parse_args()
    load = check_machine(args)  # before anything is loaded or timed
    work = Path(tempfile.mkdtemp(prefix="compare-tabular-"))
    files = export_bundled("breast-cancer", str(work / "data"))
    features = list(BUNDLED["breast-cancer"].feature_cols)
    new = pd.read_csv(files["new"])
    update_train, update_test = train_test_split(new, test_size=TEST_FRACTION, random_state=0, stratify=new["label"])
    update_train.to_csv(work / "update-train.csv", index=False)
    update_test.to_csv(work / "update-test.csv", index=False)

    base = train(files["old"], model="mlp", out=str(work / "base"), feature_cols=",".join(features), label_col="label",
                 progress=False, **BASE)
    base_dir = str(work / "base" / "model")
    result = compare(str(work / "update-train.csv"), test=str(work / "update-test.csv"), model=base_dir,
                     feature_cols=",".join(features), label_col="label", methods=args.methods, out=str(work / "compare"),
                     progress=False, **UPDATE)

    # The base as it is, on the same update-test rows: what an update has to beat.
    task = TabularClassification(label_col="label", labels=sorted(new["label"].unique()), feature_cols=features)
    net = task.load_model(base_dir).model
    accelerator = make_accelerator(TrainConfig())
    outputs, _ = predict(net, task, DataLoader(task.examples(update_test), batch_size=64, collate_fn=task.collate), accelerator)
    no_update = score(task, outputs, task.label_ids(update_test))

    out = {"benchmark": "compare_tabular", "data": "breast-cancer (Wisconsin diagnostic): base on old.csv (first 300 rows), "
           f"update on new.csv (269 rows) split {1 - TEST_FRACTION:.0%} update-train / {TEST_FRACTION:.0%} update-test (seed 0, stratified)",
           "base_recipe": BASE, "base_validation": base["best_validation"], "update_recipe": {**UPDATE, "methods": args.methods},
           "sizes": result["split_protocol"]["sizes"], "base_without_update": no_update,
           "majority_baseline": result["majority_baseline"], "methods": result["methods"],
           "recommendation": result["recommendation"], "runs": result["runs"], "config": result["config"],
           "machine_load": finished(load), "environment": environment()}
    atomic_write_json(Path(args.out), out)
    print(f"base without update: test macro-F1 {no_update['macro_f1']:.3f}, accuracy {no_update['accuracy']:.3f}")
    print(compare.render(result))


if __name__ == "__main__":
    main()
