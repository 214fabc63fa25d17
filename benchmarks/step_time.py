"""Training step cost on MiniLM: full fine-tuning vs bitfit vs head-only, same batch (32 x 128).

Step time: all methods in one process, measured in interleaved rounds (so drift in machine load hits
every method alike); median over rounds. Peak memory beyond the loaded weights: one child process per
method (a process's peak RSS only grows, so methods cannot share one), peak RSS during training minus
RSS once the model is loaded (the peak counter is reset after loading); on CUDA, max_memory_allocated minus allocated after load.

    python benchmarks/step_time.py            # ~3 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from selectune import save_delta, select
from selectune.models import resolve_model
from selectune.train.run import environment
from selectune.train.tasks import Task

METHODS = ["full", "bitfit", "head"]


MODEL = "minilm"


def load(device: str):
    task = Task(kind="text-classification", label_col="rating", labels=["negative", "neutral", "positive"])
    return task.load_model(resolve_model(MODEL)).to(device)


def make_batch(model, batch: int, length: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch, length), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 3, (batch,), generator=g).to(device)}


def step(model, optimizer, batch) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, so the peak of loading the model does not count.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_memory(method: str, batch: int, length: int, steps: int, device: str) -> dict:
    """Run in a child process: peak memory of training steps beyond the loaded model."""
    torch.manual_seed(0)
    model = load(device)
    data = make_batch(model, batch, length, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_bytes()
    select(model, method)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    for _ in range(steps):
        step(model, optimizer, data)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes()
    return {"method": method, "peak_bytes_beyond_weights": peak - base}


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_time.json"))
    parser.add_argument("--model", default=MODEL, help="model folder (default: the bundled MiniLM)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    MODEL = args.model
    if args.memory_child:
        print(json.dumps(measure_memory(args.memory_child, args.batch, args.length, 2, args.device)))
        return

    torch.manual_seed(0)
    models, optimizers, selections = {}, {}, {}
    for method in METHODS:
        model = load(args.device)
        selections[method] = select(model, method)
        optimizers[method] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        model.train()
        models[method] = model
    batch = make_batch(models["full"], args.batch, args.length, args.device)
    times = {m: [] for m in METHODS}
    for round_ in range(args.rounds + 1):
        for method in METHODS:
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(models[method], optimizers[method], batch)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if round_ > 0:  # round 0 warms up allocators and kernels
                times[method].append(time.perf_counter() - start)

    memory = {}
    for method in METHODS:
        out = subprocess.run([sys.executable, __file__, "--memory-child", method, "--model", args.model, "--batch", str(args.batch),
                              "--length", str(args.length), "--device", args.device], capture_output=True, text=True, check=True)
        memory[method] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes_beyond_weights"]

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            path = save_delta(models[method], selections[method], Path(tmp) / method)
            rows[method] = {
                "median_step_seconds": statistics.median(times[method]),
                "step_seconds": times[method],
                "peak_memory_beyond_weights_mb": memory[method] / 2**20,
                "trainable_parameters": selections[method].trainable_parameters,
                "trainable_percent": selections[method].trainable_percent,
                "delta_bytes": (path / "delta.safetensors").stat().st_size,
            }
    full = rows["full"]
    for method, row in rows.items():
        row["step_time_ratio_to_full"] = row["median_step_seconds"] / full["median_step_seconds"]
        row["memory_ratio_to_full"] = row["peak_memory_beyond_weights_mb"] / full["peak_memory_beyond_weights_mb"]
    result = {"benchmark": "step_time", "model": args.model, "batch": args.batch, "length": args.length,
              "rounds": args.rounds, "device": args.device, "torch_threads": torch.get_num_threads(), "methods": rows,
              "environment": environment()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for method, row in rows.items():
        print(f"{method:<7} step {row['median_step_seconds']:.3f}s ({row['step_time_ratio_to_full']:.2f}x full)  "
              f"memory {row['peak_memory_beyond_weights_mb']:.0f} MB ({row['memory_ratio_to_full']:.2f}x)  "
              f"trainable {row['trainable_percent']:.3f}%  delta {row['delta_bytes'] / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
