"""Resident memory of `selectune serve` with 1,000 BitFit deltas on MiniLM against the same server with one.

Two real server processes (`selectune serve --base minilm-cls --deltas DIR`), one after the other: the base server with
one BitFit delta, and the one with ``--deltas`` of them (all on the mixed path). Each gets the same request once
(so both have run a forward pass), then its resident set size is read from /proc/PID/status (VmRSS, and VmHWM, the
peak). Reported: both, the difference, and the difference per delta.

    python benchmarks/serve_memory.py                # 1,000 deltas: ~1 min in all on 2 CPU cores
    python benchmarks/serve_memory.py --deltas 8     # a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

# `python benchmarks/serve_memory.py` as the README writes it: the repo root (selectune, benchmarks) is importable
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine_load import finished, machine_load
from benchmarks.serve_deltas import SYNTHETIC_NOTE, make_perturbed_deltas
from selectune.io import atomic_write_json
from selectune.train.run import environment

LABELS = ["negative", "neutral", "positive"]
# Resident memory does not depend on what else runs, so a busy machine is recorded, never refused.
NOT_TIMING = "memory figures (resident set size), which the load average does not change"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of process ``pid``, in MB (10^6 bytes)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024 / 1e6  # the kernel writes kB (KiB)
    return fields


def measure_server(deltas_dir: Path, model: str, log: Path) -> dict:
    """Start `selectune serve` on ``deltas_dir``, send one request for ``model``, read its memory, stop it."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "selectune.cli", "serve", "--base", "minilm-cls", "--deltas", str(deltas_dir),
                                   "--port", str(port), "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        startup_s = time.perf_counter() - started
        served = httpx.get(f"{url}/v1/models", timeout=60).json()
        answer = httpx.post(f"{url}/v1/predict", json={"model": model, "inputs": ["no side effects, great relief", "it did not help"]},
                            timeout=120)
        if answer.status_code != 200:
            raise SystemExit(f"the request for {model} failed: {answer.status_code} {answer.text[:500]}")
        time.sleep(1.0)  # let the answer's buffers go back before reading
        memory = proc_status_mb(server.pid)
    finally:
        server.terminate()
        server.wait(60)
    return {"deltas_served": len(served["models"]), "refused": len(served.get("refused", {})),
            "paths": sorted({m["path"] for m in served["models"]}), "rss_mb": round(memory["VmRSS"], 1),
            "peak_rss_mb": round(memory["VmHWM"], 1), "startup_seconds": round(startup_s, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=1000, help="BitFit deltas in the second server (the first has one)")
    parser.add_argument("--out", default="benchmarks/results/serve_memory.json")
    args = parser.parse_args(argv)
    load = machine_load(busy_ok=NOT_TIMING)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"site{i:04d}" for i in range(args.deltas)]
        made = time.perf_counter()
        make_perturbed_deltas("minilm-cls", "bitfit", [root / "many" / n for n in names], labels=LABELS, seed=0)
        write_s = time.perf_counter() - made
        (root / "one").mkdir()
        os.symlink(root / "many" / names[0], root / "one" / names[0])
        delta_bytes = sum(f.stat().st_size for f in (root / "many" / names[0]).iterdir())
        one = measure_server(root / "one", names[0], root / "one.log")
        many = measure_server(root / "many", names[0], root / "many.log")
    extra = many["rss_mb"] - one["rss_mb"]
    result = {
        "benchmark": "serve_memory",
        "config": vars(args) | {"model": "minilm-cls (all-MiniLM-L6-v2, CLS pooler)", "method": "bitfit", "labels": LABELS,
                               "measure": "VmRSS of the server process (/proc/PID/status) after one 2-review request"},
        "deltas": SYNTHETIC_NOTE,
        "delta_files_bytes": delta_bytes,
        "base_server_one_delta": one,
        "server_with_deltas": many,
        "extra_rss_mb": round(extra, 1),
        "extra_rss_per_delta_kb": round(extra * 1000 / max(args.deltas - 1, 1), 1),
        "seconds_to_write_the_deltas": round(write_s, 1),
        "machine_load": finished(load),
        "environment": environment(),
        "wall_seconds": round(time.time() - started, 1),
    }
    atomic_write_json(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("base_server_one_delta", "server_with_deltas", "extra_rss_mb", "extra_rss_per_delta_kb")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
