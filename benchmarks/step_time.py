"""Training step cost on MiniLM: full fine-tuning vs bitfit vs head-only, same batch (32 x 128).

Any method string of `selectune compare` can be measured, PEFT baselines included (`--methods full,bitfit,lora`;
`benchmarks/training_cost.py` runs this script with LoRA and BEFT added).

Step time: all methods in one process, measured in interleaved rounds (so drift in machine load hits
every method alike); median over rounds. Peak memory beyond the loaded weights: one child process per
method (a process's peak RSS only grows, so methods cannot share one), peak RSS during training minus
RSS once the model is loaded (the peak counter is reset after loading); on CUDA, max_memory_allocated minus allocated after load.

    python benchmarks/step_time.py            # ~3 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# `python benchmarks/step_time.py` as the README writes it: this repo's selectune, not another install
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished
from selectune.compare.contenders import parse_contenders, prepare
from selectune.compare.cost import peak_rss_bytes, reset_peak_rss, rss_bytes
from selectune.models import resolve_model
from selectune.train.run import environment
from selectune.tasks import LoadedModel, TextClassification

METHODS = ["full", "bitfit", "head"]


MODEL = "minilm-cls"


def load(device: str) -> LoadedModel:
    task = TextClassification(label_col="rating", labels=["negative", "neutral", "positive"])
    loaded = task.load_model(resolve_model(MODEL))
    loaded.model.to(device)
    return loaded


def make_batch(model, batch: int, length: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch, length), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 3, (batch,), generator=g).to(device)}


def step(model, optimizer, batch) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_steps(models: dict, optimizers: dict, batch: dict, rounds: int, device: str = "cpu") -> dict[str, list[float]]:
    """Seconds of each optimizer step per method, in interleaved rounds so drift in machine load hits every
    method alike; round 0 warms up allocators and kernels and is not kept."""
    times: dict[str, list[float]] = {m: [] for m in models}
    for round_ in range(rounds + 1):
        for method, model in models.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(model, optimizers[method], batch)
            if device == "cuda":
                torch.cuda.synchronize()
            if round_ > 0:
                times[method].append(time.perf_counter() - start)
    return times


def measure_memory(method: str, batch: int, length: int, steps: int, device: str) -> dict:
    """Run in a child process: peak memory of training steps beyond the loaded model."""
    torch.manual_seed(0)
    loaded = load(device)
    model = loaded.model
    data = make_batch(model, batch, length, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_bytes()
    model = prepare(model, parse_contenders(method)[0], new_parameters=loaded.new_parameters).model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    for _ in range(steps):
        step(model, optimizer, data)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes()
    return {"method": method, "peak_bytes_beyond_weights": peak - base}


def main(argv: list[str] | None = None) -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="method strings, as `selectune compare --methods`")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_time.json"))
    parser.add_argument("--model", default=MODEL, help="model folder (default: the bundled MiniLM)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    add_load_flags(parser)
    args = parser.parse_args(argv)
    MODEL = args.model
    if args.memory_child:
        print(json.dumps(measure_memory(args.memory_child, args.batch, args.length, 2, args.device)))
        return
    load = check_machine(args)  # before anything is loaded or timed (not in the memory children: they run inside)

    methods = [c.text for c in parse_contenders(args.methods)]
    if methods[0] != "full":
        parser.error("--methods must start with full: every ratio is to full fine-tuning")
    torch.manual_seed(0)
    models, optimizers, prepared = {}, {}, {}
    for method in methods:
        loaded = load(args.device)
        prepared[method] = prepare(loaded.model, parse_contenders(method)[0], new_parameters=loaded.new_parameters)
        model = models[method] = prepared[method].model
        optimizers[method] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        model.train()
    batch = make_batch(models["full"], args.batch, args.length, args.device)
    times = time_steps(models, optimizers, batch, args.rounds, args.device)

    memory = {}
    for method in methods:
        out = subprocess.run([sys.executable, __file__, "--memory-child", method, "--model", args.model, "--batch", str(args.batch),
                              "--length", str(args.length), "--device", args.device], capture_output=True, text=True, check=True)
        memory[method] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes_beyond_weights"]

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            weights = prepared[method].save(Path(tmp) / method)
            rows[method] = {
                "median_step_seconds": statistics.median(times[method]),
                "step_seconds": times[method],
                "peak_memory_beyond_weights_mb": memory[method] / 2**20,
                "kind": prepared[method].contender.kind,
                "trainable_parameters": prepared[method].trainable_parameters,
                "trainable_percent": prepared[method].trainable_percent,
                "delta_bytes": weights.stat().st_size,
            }
    full = rows["full"]
    for method, row in rows.items():
        row["step_time_ratio_to_full"] = row["median_step_seconds"] / full["median_step_seconds"]
        row["memory_ratio_to_full"] = row["peak_memory_beyond_weights_mb"] / full["peak_memory_beyond_weights_mb"]
    result = {"benchmark": Path(args.out).stem, "methods_measured": methods, "model": args.model, "batch": args.batch, "length": args.length,
              "rounds": args.rounds, "device": args.device, "torch_threads": torch.get_num_threads(), "methods": rows,
              "machine_load": finished(load), "environment": environment()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for method, row in rows.items():
        print(f"{method:<7} step {row['median_step_seconds']:.3f}s ({row['step_time_ratio_to_full']:.2f}x full)  "
              f"memory {row['peak_memory_beyond_weights_mb']:.0f} MB ({row['memory_ratio_to_full']:.2f}x)  "
              f"trainable {row['trainable_percent']:.3f}%  delta {row['delta_bytes'] / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
