"""Causal LM: SmolLM2-135M-Instruct rating drug reviews asked as an instruction, zero-shot vs BitFit vs PEFT.

    python benchmarks/causal_lm.py                    # the whole benchmark (20 min on an idle 2-core CPU, estimated 31 below)
    python benchmarks/causal_lm.py --quick --model DIR --busy-ok test   # a tiny random LLaMA folder, seconds (the test)

Task: "Review: <review>\\nIs this drug review positive, neutral or negative? Answer with one word." -> the rating word,
through SmolLM2's chat template (the bundled `drug-reviews-questions` wording; the review cut by tokens so that the
prompt fits MAX_LENGTH - 2, leaving room for the answer word and the end of sequence).

Methods (the same rows, order and settings for each; learning rates fixed per method, no sweep: see RECIPE):
zero-shot base (no training; deterministic: greedy label scoring of fixed weights, so one run), selectune BitFit (zero
biases inserted on the bias-free projections, the key bias skipped), selectune `layernorm` (RMSNorm weights), PEFT LoRA
r=8 (alpha 16, q/v projections), PEFT BEFT (biases on the value projections), full fine-tuning. Seeds 0, 1, 2 for BitFit
and LoRA; seed 0 for the others. The runs go through `selectune compare`'s own run function, interleaved seed-major
(seed 0: bitfit, layernorm, lora, beft, full; then seeds 1 and 2: bitfit, lora), so the step times and memory compared
come from one process on one machine state.

Metrics: accuracy and macro-F1 on ALL 379 test reviews by constrained label scoring (each label's log-likelihood after
the prompt, softmaxed over the three labels), with 95% bootstrap CIs of the seed mean (1000 resamples of the test rows).
Cost: each run's median training step (s) and its peak memory during training = peak RSS (VmHWM, reset at the start of
training) minus RSS at the start, after malloc_trim: it counts gradients, the AdamW state, activations and validation,
not the base weights loaded before; both as ratios to full fine-tuning's. Delta size: the bytes of delta.safetensors
(selectune) or adapter_model.safetensors (PEFT).

Sizing (the lead runs this on an idle 2-core machine, <= 35 minutes): one training step of 8 x 128 tokens takes ~4.5 s
with BitFit and ~8 s with full fine-tuning there (issue 16). Label scoring is one forward per batch of prompts (they
fill a KV cache that every label continues from; the LM head runs on the last prompt position only; the eval loss is
read off the gold label's score), about a third of a BitFit step per 8 prompts, so ~48 x 1.5 s ~ 75 s per scoring of
the 379 test reviews. Measured here on a busy machine (load average ~6 on 2 cores, so absolute times several times
idle): scoring 32 prompts took 59 s against 23-71 s per BitFit step of 8 x 126 tokens (1-2.5 steps; too noisy to be
sharper). Training subset: 8 validation reviews per class, then up to 50 per class for training (all 46 remaining
neutral reviews): 146 rows, 19 steps of 8, one epoch. Estimate: 9 training runs x 19 steps (BitFit 3 x 4.5 s, LoRA
3 x ~5 s, layernorm ~4.5 s, BEFT ~4.5 s, full 8 s: ~46 s per step of all runs) ~ 870 s; 10 test scorings x ~75 s ~
750 s; validation (24 rows each) and model loads ~ 120 s: ~1,750 s = ~30 min. BitFit's learning rate is high (5e-3)
because it gets 19 steps; a balanced training subset gives the rare neutral class a fair share, which macro-F1 (the
goal: >= 0.40) rewards. These settings were not tuned on the real model (no idle machine here): the JSON records
whatever they give.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

# `python benchmarks/causal_lm.py` as the README writes it: this repo's selectune, not another install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished
from selectune.compare.bootstrap import seed_mean_cis
from selectune.compare.contenders import parse_contenders
from selectune.compare.run import Bench, _run_one
from selectune.compare.summary import summarise
from selectune.config import TrainConfig
from selectune.data import export_bundled, load_splits
from selectune.data.bundled import QUESTION
from selectune.evaluate.run import outputs_and_loss
from selectune.io import atomic_write_json
from selectune.models import resolve_model
from selectune.tasks import CausalLM
from selectune.train.run import environment

from reuse import data_sha256  # benchmarks/reuse.py, beside this script

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {"bitfit": 5e-3, "layernorm": 5e-3, "lora:r=8": 1e-3, "beft": 5e-3, "full": 5e-5}  # method -> learning rate
SEEDS = {"bitfit": [0, 1, 2], "lora:r=8": [0, 1, 2]}  # others: [0]
RECIPE = {"max_length": 128, "epochs": 1, "batch_size": 8, "eval_batch_size": 16, "warmup_ratio": 0.1, "weight_decay": 0.0,
          "validation_per_class": 8, "train_per_class": 50, "metric": "macro_f1", "keep_best": True, "bootstrap_resamples": 1000,
          "methods": METHODS, "seeds": SEEDS}
QUICK = {**RECIPE, "max_length": 48, "validation_per_class": 2, "train_per_class": 4, "test_rows": 24, "bootstrap_resamples": 100}


def instruction_files(work: Path, task: CausalLM, recipe: dict[str, Any]) -> dict[str, str]:
    """train/validation/test CSVs: each review cut by tokens so its prompt fits, then the subsets RECIPE names."""
    exported = export_bundled("drug-reviews-questions", str(work / "dq"))
    overhead = len(task.prompt_ids([f"Review: \n{QUESTION}"])[0])
    room = recipe["max_length"] - 2 - overhead  # review tokens that fit beside the answer word and end of sequence

    def ask(frame: pd.DataFrame) -> pd.DataFrame:
        reviews = [task.tokenizer.decode(task.tokenizer(r, add_special_tokens=False)["input_ids"][:room]) for r in frame.review]
        return frame.assign(question=[f"Review: {r}\n{QUESTION}" for r in reviews])[["question", "rating", "review_id"]]

    train, test = ask(pd.read_csv(exported["train"])), ask(pd.read_csv(exported["test"]))
    validation = train.groupby("rating", sort=True).head(recipe["validation_per_class"])
    rest = train.drop(validation.index)
    subset = rest.groupby("rating", sort=True).head(recipe["train_per_class"]).sort_index()  # file order, the first of each class
    files = {"train": work / "train.csv", "validation": work / "validation.csv", "test": work / "test.csv"}
    for name, frame in (("train", subset), ("validation", validation), ("test", test.iloc[:recipe.get("test_rows", len(test))])):
        frame.to_csv(files[name], index=False)
    return {name: str(path) for name, path in files.items()}


def run_order(methods: dict[str, float] = METHODS) -> list[tuple[str, int]]:
    """(method, seed) seed-major, so methods alternate: seed 0 of every method, then the extra seeds of BitFit and LoRA."""
    seeds = sorted({s for method in methods for s in SEEDS.get(method, [0])})
    return [(method, seed) for seed in seeds for method in methods if seed in SEEDS.get(method, [0])]


def zero_shot(task: CausalLM, model_path: str, splits, y_test: np.ndarray, recipe: dict[str, Any]) -> dict[str, Any]:
    """The base model's label scores on the test rows: no training, no seed."""
    started, resamples = time.perf_counter(), recipe["bootstrap_resamples"]
    model = task.load_model(model_path).model.eval()
    outputs, loss = outputs_and_loss(model, task, splits.test, batch_size=recipe["eval_batch_size"])
    metrics = {**task.score(outputs, y_test), "loss": loss, **task.loss_metrics(loss)}
    cis = seed_mean_cis(y_test, [outputs], ["macro_f1", "accuracy", "auroc"], classification=True, resamples=resamples)
    test = {name: {"mean": metrics[name], "sd": None, **dict(zip(("ci_low", "ci_high"), cis.get(name, (None, None))))}
            for name in ("macro_f1", "accuracy", "auroc", "loss", "perplexity")}
    predicted = pd.Series(outputs.argmax(1)).map(dict(enumerate(task.labels))).value_counts().to_dict()
    return {"method": "zero-shot", "kind": "base", "seeds": [], "test": test, "predicted_labels": predicted,
            "deterministic": "label scoring of fixed base weights: no training and no sampling, so one run is every run",
            "scoring_seconds": time.perf_counter() - started}


def train_all(bench: Bench, recipe: dict[str, Any], runs_dir: Path, progress: bool) -> tuple[list[dict], dict[str, dict]]:
    """Every (method, seed) in run order through compare's run function; (run records, per-method summaries)."""
    methods, resamples = recipe["methods"], recipe["bootstrap_resamples"]
    contenders = {c.text: c for c in parse_contenders(";".join(methods), CausalLM.method_defaults)}
    runs, outputs = [], {}
    for method, seed in run_order(methods):
        record, run_outputs = _run_one(contenders[method], methods[method], seed, bench, runs_dir / f"{method}-{seed}".replace(":", "_"))
        runs.append(record)
        outputs[(method, methods[method], seed)] = run_outputs
        if progress:
            print(f"{method} seed {seed}: test macro-F1 {record['test']['macro_f1']:.3f}, accuracy {record['test']['accuracy']:.3f}, "
                  f"step {record['median_step_seconds']:.2f} s, peak {record['peak_memory_mb']} MB", flush=True)
    summaries = {method: summarise(contenders[method], methods[method], [r for r in runs if r["method"] == method], outputs,
                                   bench.y["test"], bench.task, recipe["metric"], resamples, 0) for method in methods}
    return runs, summaries


def add_ratios(summaries: dict[str, dict]) -> None:
    """Each method's step time and peak training memory as a ratio to full fine-tuning's (same process, interleaved runs)."""
    full = summaries["full"]
    for summary in summaries.values():
        summary["step_time_ratio_to_full"] = summary["median_step_seconds"] / full["median_step_seconds"]
        memory = summary["peak_memory_mb"]
        summary["peak_memory_ratio_to_full"] = None if memory is None or not full["peak_memory_mb"] else memory / full["peak_memory_mb"]


def goals(summaries: dict[str, dict]) -> list[dict[str, Any]]:
    """Issue 16's goals against these measurements (seed means; the CIs are in the method summaries)."""
    f1 = {method: s["test"]["macro_f1"]["mean"] for method, s in summaries.items()}
    bitfit = summaries["bitfit"]
    return [
        {"goal": "BitFit test macro-F1 >= 0.40", "measured": f1["bitfit"], "met": f1["bitfit"] >= 0.40},
        {"goal": "BitFit test macro-F1 >= PEFT BEFT", "measured": [f1["bitfit"], f1["beft"]], "met": f1["bitfit"] >= f1["beft"]},
        {"goal": "BitFit test macro-F1 within 3 points of PEFT LoRA r=8", "measured": [f1["bitfit"], f1["lora:r=8"]],
         "met": f1["bitfit"] >= f1["lora:r=8"] - 0.03},
        {"goal": "BitFit peak training memory <= 0.6x full fine-tuning", "measured": bitfit["peak_memory_ratio_to_full"],
         "met": bitfit["peak_memory_ratio_to_full"] is not None and bitfit["peak_memory_ratio_to_full"] <= 0.6},
        {"goal": "BitFit delta <= 1 MB (1,000,000 bytes)", "measured": bitfit["delta_bytes"], "met": bitfit["delta_bytes"] <= 1_000_000},
    ]


def recipe_from(recipe: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``recipe`` with the epochs, training subset and learning rates the command line gives (the JSON records them)."""
    methods = dict(recipe["methods"])
    for item in args.lr:
        method, _, lr = item.rpartition("=")  # the last "=": a method may carry options (lora:r=8=3e-4)
        if method not in methods or not lr:
            raise SystemExit(f"--lr takes METHOD=LR with METHOD one of {', '.join(methods)}; got {item!r}")
        methods[method] = float(lr)
    overrides = {"epochs": args.epochs, "train_per_class": args.train_per_class}
    return {**recipe, **{k: v for k, v in overrides.items() if v is not None}, "methods": methods}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="base causal LM: smollm2 (default) or a local folder (--quick: a tiny one)")
    parser.add_argument("--quick", action="store_true", help="a few rows of each split and short prompts: checks the script, not a result")
    parser.add_argument("--out", default=str(RESULTS / "causal_lm.json"))
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--epochs", type=int, help=f"epochs of every method (default {RECIPE['epochs']})")
    parser.add_argument("--train-per-class", type=int, help=f"training reviews per class (default {RECIPE['train_per_class']})")
    parser.add_argument("--lr", nargs="+", default=[], metavar="METHOD=LR", help=f"learning rates instead of {METHODS}")
    add_load_flags(parser)
    args = parser.parse_args(argv)
    load = check_machine(args)  # before anything is loaded or timed
    torch.manual_seed(0)
    recipe = recipe_from(QUICK if args.quick else RECIPE, args)
    work = Path(tempfile.mkdtemp(prefix="causal-lm-bench-"))
    model_path = resolve_model(args.model)
    task = CausalLM(label_col="rating", prompt_col="question", max_length=recipe["max_length"])
    task.load_model(model_path)  # the tokenizer, for cutting the reviews
    files = instruction_files(work, task, recipe)
    splits = load_splits(files["train"], files["validation"], files["test"], label_col="rating", **task.data_options())
    task.labels = splits.labels
    config = TrainConfig(epochs=recipe["epochs"], batch_size=recipe["batch_size"], eval_batch_size=recipe["eval_batch_size"],
                         warmup_ratio=recipe["warmup_ratio"], weight_decay=recipe["weight_decay"], metric=recipe["metric"],
                         keep_best=recipe["keep_best"], progress=False)
    rows = {role: task.examples(getattr(splits, role)) for role in ("train", "validation", "test")}
    y = {role: task.label_ids(getattr(splits, role)) for role in ("validation", "test")}
    bench = Bench(task, model_path, splits, rows, y, dataclasses.replace(config, lr=None, seed=0), [])
    base = zero_shot(task, model_path, splits, y["test"], recipe)
    runs, summaries = train_all(bench, recipe, work / "runs", args.progress)
    add_ratios(summaries)
    command = " ".join(["python benchmarks/causal_lm.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"benchmark": "causal_lm", "command": command, "model": args.model, "model_path": model_path, "quick": args.quick, "recipe": recipe,
              "data_sha256": data_sha256(files), "sizes": {role: len(getattr(splits, role)) for role in ("train", "validation", "test")},
              "label_counts": {role: getattr(splits, role).rating.value_counts().to_dict() for role in ("train", "validation", "test")},
              "zero_shot": base, "methods": summaries, "goals": goals(summaries),
              "memory_how": runs[0]["peak_memory_how"], "runs": runs, "machine_load": finished(load), "environment": environment()}
    atomic_write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
