"""How much of a CPU training step is dropout, and what BitFit's step ratio to full fine-tuning is without it.

A profile of one MiniLM step at 32×128 on 2 CPU cores put about 30% of it in `aten::bernoulli_` (dropout masks;
the attention-probability dropout alone draws 32×12×128×128 numbers per layer). Every method pays that cost, so it
pulls BitFit's ratio to full fine-tuning towards 1. This measures both methods with the model's dropout as
configured, without attention-probability dropout, and without any dropout (a recipe change, not a free speedup).

    python benchmarks/dropout_cost.py        # ~2 min on 2 idle CPU cores; writes results/dropout_cost.json
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging

from selectune.delta import atomic_write_json
from selectune.models import resolve_model
from selectune.selection import select
from selectune.train.run import environment

SETTINGS = {"as configured (0.1, 0.1)": {}, "no attention dropout (0, 0.1)": {"attention_probs_dropout_prob": 0.0},
            "no dropout (0, 0)": {"attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0}}


def step_seconds(models: dict, batch: dict, rounds: int) -> dict[str, float]:
    """Median seconds of one optimizer step per method, rounds interleaved so machine noise hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds + 1):
        for name, (model, optimizer) in models.items():
            started = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if r:  # round 0 warms up allocators and kernels
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "dropout_cost.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    torch.manual_seed(0)
    path = resolve_model("minilm")
    batch = {"input_ids": torch.randint(1000, 20000, (32, 128)), "attention_mask": torch.ones(32, 128, dtype=torch.long),
             "labels": torch.randint(0, 3, (32,))}  # [32, 128] token ids: the step_time.py batch shape
    results = {}
    for setting, overrides in SETTINGS.items():
        models = {}
        for method in ("full", "bitfit"):
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, **overrides)
            select(model, method)
            model.train()
            models[method] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4))
        med = step_seconds(models, batch, args.rounds)
        results[setting] = {"full_step_seconds": med["full"], "bitfit_step_seconds": med["bitfit"],
                            "bitfit_ratio_to_full": med["bitfit"] / med["full"]}
        print(f"{setting}: full {med['full']:.3f} s, bitfit {med['bitfit']:.3f} s, ratio {med['bitfit'] / med['full']:.2f}", flush=True)
    atomic_write_json(Path(args.out), {"benchmark": "dropout_cost", "model": "minilm", "batch": 32, "length": 128,
                                       "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
                                       "settings": results, "environment": environment()})


if __name__ == "__main__":
    main()
