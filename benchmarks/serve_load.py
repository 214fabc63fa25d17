"""Bounded load test of `selectune serve` on loopback: concurrent clients for a fixed time, then it stops by itself.

The server is the real CLI (`selectune serve --base minilm --deltas DIR --keys FILE`) in its own process, with
16 BitFit deltas (mixed path) and one sparse-mask delta (grouped path). Each client thread sends requests of
1-4 real drug reviews to a random delta with its tenant's key, one at a time, until the time is up. Reported:
requests, errors (any non-200 answer or failed connection), latency p50/p95/p99, examples/s, and the batch sizes
the server's /metrics saw.

    python benchmarks/serve_load.py                  # 60 s of load, ~2 min in all on 2 shared CPU cores
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

# `python benchmarks/serve_load.py` as the README writes it: the repo root (selectune, benchmarks) is importable
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import add_load_flags, check_machine, finished
from benchmarks.serve_deltas import SYNTHETIC_NOTE, make_perturbed_deltas
from selectune.data import export_bundled
from selectune.io import atomic_write_json
from selectune.serve.tenants import hash_key
from selectune.train.run import environment

LABELS = ["negative", "neutral", "positive"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the clients send requests")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--deltas", type=int, default=16, help="BitFit deltas (mixed path); one sparse delta is added")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--out", default="benchmarks/results/serve_load.json")
    add_load_flags(parser)
    args = parser.parse_args()
    load = check_machine(args)  # before anything is loaded or timed
    started = time.time()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        texts = pd.read_csv(export_bundled("drug-reviews", str(root / "data"))["test"])["review"].astype(str).tolist()
        names = [f"site{i:02d}" for i in range(args.deltas)]
        make_perturbed_deltas("minilm", "bitfit", [root / "deltas" / n for n in names], labels=LABELS, seed=0)
        make_perturbed_deltas("minilm", "random", [root / "deltas" / "icu-sparse"], labels=LABELS, seed=100)
        models = names + ["icu-sparse"]
        tenants = {m: f"key-{m}" for m in models}  # one tenant per delta: every request is authorised per tenant
        (root / "keys.json").write_text(json.dumps({"keys": [
            *({"sha256": hash_key(k), "tenant": m, "models": [m]} for m, k in tenants.items()),
            {"sha256": hash_key("ops-key"), "tenant": "ops", "admin": True}]}))
        port = _free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        log = open(root / "server.log", "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "selectune.cli", "serve", "--base", "minilm", "--deltas", str(root / "deltas"),
             "--keys", str(root / "keys.json"), "--port", str(port), "--max-batch-size", str(args.max_batch_size),
             "--max-items", "4", "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {(root / 'server.log').read_text()[-2000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start in 300 s")
                time.sleep(0.5)
            listed = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer ops-key"}).json()
            paths = {m["name"]: m["path"] for m in listed["models"]}
            records: list[tuple[float, int, int, str]] = []  # (latency s, status, examples, model)
            lock = threading.Lock()
            stop_at = time.monotonic() + args.seconds

            def client(seed: int) -> None:
                local = random.Random(seed)
                with httpx.Client(base_url=url, timeout=60) as http:
                    while time.monotonic() < stop_at:
                        model = local.choice(models)
                        inputs = [local.choice(texts) for _ in range(local.randint(1, 4))]
                        t0 = time.perf_counter()
                        try:
                            status = http.post("/v1/predict", json={"model": model, "inputs": inputs},
                                               headers={"Authorization": f"Bearer {tenants[model]}"}).status_code
                        except httpx.HTTPError:
                            status = -1
                        with lock:
                            records.append((time.perf_counter() - t0, status, len(inputs), model))

            load_start = time.perf_counter()
            threads = [threading.Thread(target=client, args=(rng.random(),)) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            load_seconds = time.perf_counter() - load_start
            metrics = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer ops-key"}).text
        finally:
            server.terminate()
            server.wait(60)
            log.close()
        server_log_tail = (root / "server.log").read_text()[-1500:]

    latencies = np.array([r[0] for r in records]) * 1000
    ok = [r for r in records if r[1] == 200]
    errors = len(records) - len(ok)

    def pct(values, q):
        return round(float(np.percentile(values, q)), 1) if len(values) else None

    per_path = {}
    for path in ("mixed", "grouped"):
        lat = np.array([r[0] for r in ok if paths.get(r[3]) == path]) * 1000
        per_path[path] = {"requests": int(len(lat)), "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99)}
    batches = _metric(metrics, "selectune_batch_examples_count", path="mixed")
    result = {
        "benchmark": "serve_load",
        "config": vars(args) | {"model": "minilm (all-MiniLM-L6-v2)", "inputs_per_request": "1-4 drug reviews, uniform",
                               "models": f"{args.deltas} bitfit (mixed path) + 1 random sparse mask (grouped path), one tenant key each",
                               "transport": "HTTP/1.1 on loopback, server in its own process (selectune serve), clients as threads"},
        "deltas": SYNTHETIC_NOTE,
        "load_average_at_start": load["load_average"]["1min"],
        "duration_s": round(load_seconds, 1),
        "requests": len(records),
        "errors": errors,
        "error_statuses": sorted({r[1] for r in records if r[1] != 200}),
        "examples": sum(r[2] for r in ok),
        "requests_per_second": round(len(ok) / load_seconds, 2),
        "examples_per_second": round(sum(r[2] for r in ok) / load_seconds, 2),
        "latency_ms": {"p50": pct(latencies, 50), "p95": pct(latencies, 95), "p99": pct(latencies, 99), "max": pct(latencies, 100)},
        "latency_ms_by_path": per_path,
        "server_batches": {
            "mixed_batches": int(batches),
            "mean_examples_per_mixed_batch": round(_metric(metrics, "selectune_batch_examples_sum", path="mixed") / max(batches, 1), 2),
            "mean_deltas_per_mixed_batch": round(_metric(metrics, "selectune_batch_deltas_sum") / max(_metric(metrics, "selectune_batch_deltas_count"), 1), 2),
            "grouped_passes": int(_metric(metrics, "selectune_batch_examples_count", path="grouped")),
        },
        "machine_load": finished(load),
        "environment": environment(),
        "wall_seconds": round(time.time() - started, 1),
    }
    if errors:
        result["server_log_tail"] = server_log_tail
    atomic_write_json(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("requests", "errors", "examples_per_second", "latency_ms", "latency_ms_by_path", "server_batches")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
