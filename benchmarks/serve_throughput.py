"""Serving throughput on MiniLM (CPU): one mixed batch over 1, 4, 16, 64 BitFit deltas vs the single merged model,
and PEFT LoRA's mixed batch (``adapter_names``) over as many adapters on the same base, same batches, same process.

Every configuration runs the same pre-tokenised batches of real drug reviews (batch 32, up to 128 tokens): the
model's forward pass only (tokenising and answer formatting are the same for all and left out). Measurements
are interleaved in rounds so drift in machine load hits every configuration alike; the median over rounds is
reported. Mixed outputs are checked against each delta merged alone (max |logit difference|).

    python benchmarks/serve_throughput.py            # ~2 min on 2 shared CPU cores
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

# `python benchmarks/serve_throughput.py` as the README writes it: the repo root (selectune, benchmarks) is importable
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished
from benchmarks.serve_deltas import SYNTHETIC_NOTE, make_perturbed_deltas
from selectune.data import export_bundled
from selectune.delta import load_delta
from selectune.io import atomic_write_json
from selectune.models import resolve_model
from selectune.serve.delta_store import DeltaStore
from selectune.train.run import environment
from selectune.tasks import TextClassification

LABELS = ["negative", "neutral", "positive"]
DELTA_COUNTS = [1, 4, 16, 64]


def review_batches(tokenizer, batch_size: int, n_batches: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    with tempfile.TemporaryDirectory() as tmp:
        texts = pd.read_csv(export_bundled("drug-reviews", tmp)["test"])["review"].astype(str).tolist()
    batches = []
    for b in range(n_batches):
        chunk = [texts[(b * batch_size + i) % len(texts)] for i in range(batch_size)]
        batches.append(dict(tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")))
    return batches


def lora_model(n_adapters: int, r: int):
    """PEFT LoRA (query+value, PEFT's default for BERT) with ``n_adapters`` adapters on a fresh MiniLM base."""
    base = TextClassification(label_col="rating", labels=LABELS).load_model(resolve_model("minilm-cls")).model.eval()
    return with_lora_adapters(base, "SEQ_CLS", ["query", "value"], n_adapters, r)


def with_lora_adapters(base, task_type: str, targets: list[str], n_adapters: int, r: int):
    """``base`` with ``n_adapters`` PEFT LoRA adapters (``a0``, ``a1``, ...) of rank ``r`` on ``targets``, in eval mode."""
    from peft import LoraConfig, get_peft_model

    # init_lora_weights=False: B is random, not zero, so every adapter really changes the output (as trained ones do).
    config = LoraConfig(task_type=task_type, r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(0)
    model = get_peft_model(base, config, adapter_name="a0")
    for i in range(1, n_adapters):
        model.add_adapter(f"a{i}", config)
    return model.eval()


def throughput(forward, batches, seconds: float) -> float:
    """Examples per second over whole passes through ``batches`` for at least ``seconds``."""
    done, start = 0, time.perf_counter()
    with torch.inference_mode():
        while True:
            for batch in batches:
                forward(batch)
                done += batch["input_ids"].shape[0]
            if time.perf_counter() - start >= seconds:
                return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batches", type=int, default=2, help="distinct batches cycled through")
    parser.add_argument("--seconds", type=float, default=2.0, help="per configuration per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/serve_throughput.json")
    add_load_flags(parser)
    args = parser.parse_args()
    load = check_machine(args)  # before anything is loaded or timed
    torch.manual_seed(0)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"site{i:02d}" for i in range(max(DELTA_COUNTS))]
        make_perturbed_deltas("minilm-cls", "bitfit", [Path(tmp) / n for n in names], labels=LABELS, seed=0, scale=0.05)
        store = DeltaStore("minilm-cls")
        for name in names:
            store.commit(store.prepare_delta(name, Path(tmp) / name))
        assert {d.serving_path for d in store.deltas.values()} == {"mixed"}
        mixed = store.path("mixed")
        merged = TextClassification(label_col="rating", labels=LABELS).load_model(resolve_model("minilm-cls")).model.eval()
        load_delta(merged, Path(tmp) / names[0])
        # Correctness on the real model: each example of a 16-delta batch against its delta merged alone.
        batches = review_batches(store.tokenizer, args.batch_size, args.batches, args.max_length)
        check_rows = torch.arange(args.batch_size) % 16
        mixed.model.set_deltas([mixed.mixed_delta(store.deltas[n]) for n in names[:16]])
        mixed_logits = mixed.model.forward(check_rows, **batches[0])
        worst = 0.0
        for d in range(16):
            alone = TextClassification(label_col="rating", labels=LABELS).load_model(resolve_model("minilm-cls")).model.eval()
            load_delta(alone, Path(tmp) / names[d])
            with torch.inference_mode():
                expected = alone(**batches[0]).logits
            picked = (check_rows == d).nonzero().squeeze(1)
            worst = max(worst, float((mixed_logits[picked] - expected[picked]).abs().max()))
            del alone

    # name -> (setup before timing, forward of one batch)
    configs = {"merged (1 delta merged into the base)": (None, lambda b: merged(**b).logits)}
    for count in DELTA_COUNTS:
        def tables(count=count):
            mixed.model.set_deltas([mixed.mixed_delta(store.deltas[n]) for n in names[:count]])

        def mixed_forward(batch, count=count):
            rows = torch.arange(batch["input_ids"].shape[0]) % count  # round-robin: every delta in every batch
            return mixed.model.forward(rows, **batch)
        configs[f"selectune mixed, {count} bitfit deltas"] = (tables, mixed_forward)
    lora = {}
    for count in DELTA_COUNTS:
        lora[count] = lora_model(count, args.lora_r)
        adapters = [f"a{i % count}" for i in range(args.batch_size)]
        configs[f"peft lora mixed (adapter_names), {count} adapters"] = (
            None, lambda b, m=lora[count], a=adapters: m(**b, adapter_names=a[: b["input_ids"].shape[0]]).logits)

    for setup, forward in configs.values():  # warm-up: first calls allocate and pick kernels
        if setup:
            setup()
        with torch.inference_mode():
            forward(batches[0])
    rounds = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (setup, forward) in configs.items():
            if setup:
                setup()
            rounds[name].append(throughput(forward, batches, args.seconds))
    median = {name: statistics.median(v) for name, v in rounds.items()}
    merged_rate = median["merged (1 delta merged into the base)"]
    rows = [{"config": name, "examples_per_second": round(median[name], 2), "vs_merged": round(median[name] / merged_rate, 3),
             "rounds": [round(v, 2) for v in rounds[name]]} for name in configs]
    result = {
        "benchmark": "serve_throughput",
        "config": vars(args) | {"model": "minilm-cls (all-MiniLM-L6-v2, CLS pooler)", "delta_counts": DELTA_COUNTS, "method": "bitfit",
                               "labels": LABELS, "data": "drug-reviews test reviews, tokenised, padded per batch",
                               "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "deltas": SYNTHETIC_NOTE,
        "lora": f"peft LoraConfig(r={args.lora_r}, alpha={2 * args.lora_r}, target_modules=[query, value], "
                "init_lora_weights=False), classifier in modules_to_save; mixed batch via forward(adapter_names=...)",
        "load_average_at_start": load["load_average"]["1min"],
        "rows": rows,
        "mixed16_vs_merged": round(median["selectune mixed, 16 bitfit deltas"] / merged_rate, 3),
        "mixed16_vs_lora16": round(median["selectune mixed, 16 bitfit deltas"] / median["peft lora mixed (adapter_names), 16 adapters"], 3),
        "max_abs_logit_diff_mixed16_vs_each_delta_alone": worst,
        "machine_load": finished(load),
        "environment": environment(),
        "wall_seconds": round(time.time() - started, 1),
    }
    atomic_write_json(Path(args.out), result)
    for row in rows:
        print(f"{row['config']:<52} {row['examples_per_second']:8.1f} ex/s  {row['vs_merged']:.3f}x merged  rounds {row['rounds']}")
    print(f"16 deltas vs merged {result['mixed16_vs_merged']}x, vs LoRA-16 {result['mixed16_vs_lora16']}x; "
          f"max |logit diff| vs each delta alone {worst:.2e}; wrote {args.out}")


if __name__ == "__main__":
    main()
