"""How much of a CPU training step is dropout, and what BitFit's step ratio to full fine-tuning is without it.

A profile of one MiniLM step at 32×128 on 2 CPU cores put a large share of it in `aten::bernoulli_` (dropout masks;
the attention-probability dropout alone draws 32×12×128×128 numbers per layer). Every method pays that cost, so it
pulls BitFit's ratio to full fine-tuning towards 1. This measures both methods with the model's dropout as
configured, without attention-probability dropout, and without any dropout (a recipe change, not a free speedup).

    python benchmarks/dropout_cost.py        # ~2 min on 2 idle CPU cores; writes results/dropout_cost.json
"""
from __future__ import annotations

import argparse
import statistics
import warnings
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging

# `python benchmarks/dropout_cost.py` as the README writes it: this repo's selectune, not another install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished
from selectune.io import atomic_write_json
from selectune.models import resolve_model
from selectune.selection import select
from selectune.train.run import environment

from step_time import make_batch, time_steps  # benchmarks/step_time.py, beside this script: the same batch and timing

SETTINGS = {"as configured (0.1, 0.1)": {}, "no attention dropout (0, 0.1)": {"attention_probs_dropout_prob": 0.0},
            "no dropout (0, 0)": {"attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "dropout_cost.json"))
    add_load_flags(parser)
    args = parser.parse_args()
    load = check_machine(args)  # before anything is loaded or timed
    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    torch.manual_seed(0)
    path = resolve_model("minilm-cls")
    results = {}
    for setting, overrides in SETTINGS.items():
        models, optimizers = {}, {}
        for method in ("full", "bitfit"):
            model = models[method] = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, **overrides)
            select(model, method)
            model.train()
            optimizers[method] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batch = make_batch(models["full"], 32, 128, "cpu")  # [32, 128] token ids, step_time.py's batch
        med = {m: statistics.median(t) for m, t in time_steps(models, optimizers, batch, args.rounds).items()}
        results[setting] = {"full_step_seconds": med["full"], "bitfit_step_seconds": med["bitfit"],
                            "bitfit_ratio_to_full": med["bitfit"] / med["full"]}
        print(f"{setting}: full {med['full']:.3f} s, bitfit {med['bitfit']:.3f} s, ratio {med['bitfit'] / med['full']:.2f}", flush=True)
    atomic_write_json(Path(args.out), {"benchmark": "dropout_cost", "model": "minilm-cls", "batch": 32, "length": 128,
                                       "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
                                       "settings": results, "machine_load": finished(load),
                                       "environment": environment()})


if __name__ == "__main__":
    main()
