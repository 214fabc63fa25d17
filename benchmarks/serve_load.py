"""Bounded load test of `selectune serve` on loopback: concurrent clients for a fixed time, then it stops by itself.

The server is the real CLI (`selectune serve --base minilm-cls --deltas DIR --keys FILE`) in its own process, with
BitFit deltas (mixed path) and one sparse-mask delta (grouped path), one tenant key each. Each client thread sends
requests of 1-4 real drug reviews to a random delta with its tenant's key, one at a time, until the time is up.
Reported: requests, errors (any non-200 answer or failed connection) per tenant, latency p50/p95/p99, examples/s,
and the batch sizes the server's /metrics saw.

``--scenario hostile`` adds what one tenant may do to the others, all at once: a flooding tenant (3x its in-flight
limit of connections, back to back, largest requests), a hostile delta among the deltas (float sparse indices, with a
body bias written before them) that the server must refuse alone, the same hostile delta hot-loaded mid-load (422),
and a hot reload of a served delta with new weights mid-load. Every other tenant must see 0 errors; the flooder
must get 429s. ``--short`` is a few seconds with few deltas (tests run it).

    python benchmarks/serve_load.py                      # 60 s of load, ~2 min in all on 2 shared CPU cores
    python benchmarks/serve_load.py --scenario hostile   # 64 deltas, 8 clients, 60 s of load, ~2 min in all
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
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
SPARSE, HOSTILE, FLOODER = "icu-sparse", "hostile-float-indices", "flooder"
RELOADED = "site00"  # the delta hot-reloaded with new weights mid-load (hostile scenario)
# (scenario, short) -> defaults of --seconds, --clients, --deltas; flags given on the command line win
DEFAULTS = {("steady", False): (60.0, 16, 16), ("hostile", False): (60.0, 8, 64),
            ("steady", True): (4.0, 3, 3), ("hostile", True): (6.0, 3, 4)}


@dataclass
class Plan:
    """What the clients send: model -> its tenant's key, the well-behaved models, the flooder's and the hostile's."""
    keys: dict[str, str]
    models: list[str]
    texts: list[str]
    flooder: str | None = None
    hostile: str | None = None
    records: list[tuple] = field(default_factory=list)  # (latency s, status, examples, model, version)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, http: httpx.Client, model: str, inputs: list[str]) -> None:
        t0 = time.perf_counter()
        try:
            answer = http.post("/v1/predict", json={"model": model, "inputs": inputs},
                               headers={"Authorization": f"Bearer {self.keys[model]}"})
            status, version = answer.status_code, answer.json().get("version") if answer.status_code == 200 else None
        except httpx.HTTPError:
            status, version = -1, None
        with self.lock:
            self.records.append((time.perf_counter() - t0, status, len(inputs), model, version))


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


def float_indices(source: Path, out: Path) -> Path:
    """A copy of the sparse delta at ``source`` whose first ``__indices__`` are floats (and a body bias set to 5, written
    before them), its weights hash recomputed so that it passes the file checks: the server must refuse it alone."""
    import torch
    from safetensors.torch import load_file, save_file

    from selectune.delta import DELTA_CONFIG, DELTA_WEIGHTS
    from selectune.fingerprint import file_sha256

    raw = load_file(str(source / DELTA_WEIGHTS))
    key = next(k for k in sorted(raw) if k.endswith(".__indices__"))
    raw[key] = raw[key].to(torch.float32)
    raw["bert.encoder.layer.1.output.dense.bias"] = torch.full((384,), 5.0)
    out.mkdir(parents=True)
    save_file(raw, str(out / DELTA_WEIGHTS), metadata={"format": "selectune-delta"})
    config = json.loads((source / DELTA_CONFIG).read_text())
    config["weights_sha256"] = file_sha256(out / DELTA_WEIGHTS)
    (out / DELTA_CONFIG).write_text(json.dumps(config))
    return out


def make_deltas(root: Path, args) -> list[str]:
    """Write the served deltas under root/deltas (and, hostile: the reload's new weights and the late hostile delta
    outside it); return the names of the well-behaved models."""
    names = [f"site{i:02d}" for i in range(args.deltas)]
    extra = [FLOODER] if args.scenario == "hostile" else []
    make_perturbed_deltas("minilm-cls", "bitfit", [root / "deltas" / n for n in names + extra], labels=LABELS, seed=0)
    make_perturbed_deltas("minilm-cls", "random", [root / "deltas" / SPARSE], labels=LABELS, seed=100)
    if args.scenario == "hostile":
        make_perturbed_deltas("minilm-cls", "bitfit", [root / "later" / RELOADED], labels=LABELS, seed=1000)  # new weights
        float_indices(root / "deltas" / SPARSE, root / "deltas" / HOSTILE)
        float_indices(root / "deltas" / SPARSE, root / "later" / f"{HOSTILE}-late")
    return names + [SPARSE]


def start_server(root: Path, plan: Plan, args) -> tuple[subprocess.Popen, str]:
    """The real `selectune serve` in its own process, with one key per model and an admin key; waits until healthy."""
    (root / "keys.json").write_text(json.dumps({"keys": [
        *({"sha256": hash_key(k), "tenant": m, "models": [m]} for m, k in plan.keys.items()),
        {"sha256": hash_key("ops-key"), "tenant": "ops", "admin": True}]}))
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "selectune.cli", "serve", "--base", "minilm-cls", "--deltas", str(root / "deltas"),
         "--keys", str(root / "keys.json"), "--port", str(port), "--max-batch-size", str(args.max_batch_size),
         "--max-items", "4", "--max-wait-ms", str(args.max_wait_ms), "--max-in-flight-per-tenant", str(args.in_flight),
         "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()  # the child has its own handle
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.terminate()
            raise SystemExit("server did not start in 300 s")
        time.sleep(0.5)


def run_clients(url: str, plan: Plan, args, stop_at: float) -> list[threading.Thread]:
    """Start the well-behaved clients (one request at a time, random model), the flooder's connections and the
    hostile tenant's client; they stop by themselves at ``stop_at``."""
    def polite(seed: float) -> None:
        local = random.Random(seed)
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < stop_at:
                plan.send(http, local.choice(plan.models), [local.choice(plan.texts) for _ in range(local.randint(1, 4))])

    def flood(seed: float) -> None:  # back to back, the largest requests, no pause after a 429
        local = random.Random(seed)
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < stop_at:
                plan.send(http, plan.flooder, [local.choice(plan.texts) for _ in range(4)])

    def hostile(seed: float) -> None:  # asks for its refused delta now and then
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < stop_at:
                plan.send(http, plan.hostile, [plan.texts[0]])
                time.sleep(0.2)

    rng = random.Random(0)
    work = [(polite, rng.random()) for _ in range(args.clients)]
    if plan.flooder:
        work += [(flood, rng.random()) for _ in range(3 * args.in_flight)] + [(hostile, 0.0)]
    threads = [threading.Thread(target=target, args=(seed,), daemon=True) for target, seed in work]
    for t in threads:
        t.start()
    return threads


def mid_load_changes(root: Path, url: str, at: float) -> dict:
    """At ``at`` (monotonic): hot-reload RELOADED with new weights, then try to hot-load the hostile delta."""
    time.sleep(max(0.0, at - time.monotonic()))
    ops = {"Authorization": "Bearer ops-key"}
    with httpx.Client(base_url=url, timeout=300, headers=ops) as http:
        before = http.get(f"/v1/models/{RELOADED}").json()["version"]
        for name in ("delta.safetensors", "delta_config.json"):
            shutil.copy(root / "later" / RELOADED / name, root / "deltas" / RELOADED / name)
        t0 = time.perf_counter()
        reload = http.post(f"/v1/models/{RELOADED}/load")
        reload_s = time.perf_counter() - t0
        shutil.copytree(root / "later" / f"{HOSTILE}-late", root / "deltas" / f"{HOSTILE}-late")
        late = http.post(f"/v1/models/{HOSTILE}-late/load")
    return {"reload": {"model": RELOADED, "status": reload.status_code, "seconds": round(reload_s, 2), "version_before": before,
                       "version_after": reload.json().get("version") if reload.status_code == 200 else None},
            "hostile_hot_load": {"model": f"{HOSTILE}-late", "status": late.status_code, "detail": late.json().get("detail", "")[:300]}}


def _pct(values, q):
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def _latency(records) -> dict:
    ms = np.array([r[0] for r in records]) * 1000
    return {"requests": len(records), "p50": _pct(ms, 50), "p95": _pct(ms, 95), "p99": _pct(ms, 99), "max": _pct(ms, 100)}


def per_tenant(records, plan: Plan) -> dict:
    """Requests, errors and the statuses seen, per tenant (one per model), the well-behaved ones first."""
    out = {}
    for model in [*plan.models, *filter(None, [plan.flooder, plan.hostile])]:
        mine = [r for r in records if r[3] == model]
        statuses = sorted({r[1] for r in mine})
        out[model] = {"requests": len(mine), "errors": sum(r[1] != 200 for r in mine), "statuses": statuses,
                      "versions_answered": len({r[4] for r in mine if r[4]})}
    return out


def summarize(plan: Plan, args, load_seconds: float, metrics: str, paths: dict, refused: dict) -> dict:
    records = plan.records
    polite = [r for r in records if r[3] in plan.models]
    ok = [r for r in polite if r[1] == 200]
    tenants = per_tenant(records, plan)
    batches = _metric(metrics, "selectune_batch_examples_count", path="mixed")
    result = {
        "requests": len(polite), "errors": len(polite) - len(ok),
        "error_statuses": sorted({r[1] for r in polite if r[1] != 200}),
        "examples": sum(r[2] for r in ok),
        "requests_per_second": round(len(ok) / load_seconds, 2),
        "examples_per_second": round(sum(r[2] for r in ok) / load_seconds, 2),
        "latency_ms": {k: v for k, v in _latency(polite).items() if k != "requests"},
        "latency_ms_by_path": {path: _latency([r for r in ok if paths.get(r[3]) == path]) for path in ("mixed", "grouped")},
        "errors_by_tenant": {m: t["errors"] for m, t in tenants.items()},
        "tenants": tenants,
        "refused_at_start": sorted(refused),
        "server_batches": {
            "mixed_batches": int(batches),
            "mean_examples_per_mixed_batch": round(_metric(metrics, "selectune_batch_examples_sum", path="mixed") / max(batches, 1), 2),
            "mean_deltas_per_mixed_batch": round(_metric(metrics, "selectune_batch_deltas_sum") / max(_metric(metrics, "selectune_batch_deltas_count"), 1), 2),
            "grouped_passes": int(_metric(metrics, "selectune_batch_examples_count", path="grouped")),
        },
    }
    if plan.flooder:
        flood = [r for r in records if r[3] == plan.flooder]
        result["flooder"] = {"connections": 3 * args.in_flight, "requests": len(flood), "answered_200": sum(r[1] == 200 for r in flood),
                             "refused_429": sum(r[1] == 429 for r in flood), "other_statuses": sorted({r[1] for r in flood} - {200, 429}),
                             "latency_ms_of_200": _latency([r for r in flood if r[1] == 200])}
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["steady", "hostile"], default="steady",
                        help="steady: well-behaved clients only; hostile: plus a flooder, a hostile delta and a hot reload")
    parser.add_argument("--short", action="store_true", help="a few seconds with few deltas (a smoke run; tests use it)")
    parser.add_argument("--seconds", type=float, default=None, help="how long the clients send requests (default 60; short: 4-6)")
    parser.add_argument("--clients", type=int, default=None, help="well-behaved clients (default: steady 16, hostile 8; short 3)")
    parser.add_argument("--deltas", type=int, default=None, help="BitFit deltas (mixed path); one sparse delta is added "
                                                                 "(default: steady 16, hostile 64; short 3-4)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, default=None, help="the server's --max-in-flight-per-tenant (default: "
                                                                    "--clients, so a well-behaved tenant never reaches it)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/serve_load.json (hostile: serve_load_hostile.json)")
    add_load_flags(parser)
    args = parser.parse_args(argv)
    seconds, clients, deltas = DEFAULTS[(args.scenario, args.short)]
    args.seconds = seconds if args.seconds is None else args.seconds
    args.clients = clients if args.clients is None else args.clients
    args.deltas = deltas if args.deltas is None else args.deltas
    args.in_flight = args.clients if args.in_flight is None else args.in_flight
    if args.out is None:
        args.out = "benchmarks/results/" + ("serve_load.json" if args.scenario == "steady" else "serve_load_hostile.json")
    return args


def run(root: Path, args) -> dict:
    """Deltas, server, clients (and, hostile, the changes mid-load); the summary of what the clients saw."""
    texts = pd.read_csv(export_bundled("drug-reviews", str(root / "data"))["test"])["review"].astype(str).tolist()
    models = make_deltas(root, args)
    hostile = args.scenario == "hostile"
    keys = {m: f"key-{m}" for m in models + ([FLOODER, HOSTILE] if hostile else [])}  # one tenant per delta
    plan = Plan(keys, models, texts, flooder=FLOODER if hostile else None, hostile=HOSTILE if hostile else None)
    server, url = start_server(root, plan, args)
    try:
        listed = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer ops-key"}).json()
        paths = {m["name"]: m["path"] for m in listed["models"]}
        load_start, stop_at = time.perf_counter(), time.monotonic() + args.seconds
        threads = run_clients(url, plan, args, stop_at)
        changes = mid_load_changes(root, url, stop_at - args.seconds / 2) if hostile else None
        for t in threads:
            t.join()
        load_seconds = time.perf_counter() - load_start
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer ops-key"}).text
    finally:
        server.terminate()
        server.wait(60)
    result = summarize(plan, args, load_seconds, metrics, paths, listed.get("refused", {}))
    result["duration_s"] = round(load_seconds, 1)
    if changes is not None:
        result["mid_load"] = changes
    if result["errors"]:
        result["server_log_tail"] = (root / "server.log").read_text()[-1500:]
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    load = check_machine(args)  # before anything is loaded or timed
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(Path(tmp), args)
    extra = "; a flooding tenant, a hostile delta refused at start and hot-loaded mid-load, a hot reload" if args.scenario == "hostile" else ""
    result = {
        "benchmark": "serve_load" if args.scenario == "steady" else "serve_load_hostile",
        "config": vars(args) | {"model": "minilm-cls (all-MiniLM-L6-v2, CLS pooler)", "inputs_per_request": "1-4 drug reviews, uniform",
                               "models": f"{args.deltas} bitfit (mixed path) + 1 random sparse mask (grouped path), one tenant key each{extra}",
                               "transport": "HTTP/1.1 on loopback, server in its own process (selectune serve), clients as threads"},
        "deltas": SYNTHETIC_NOTE,
        "load_average_at_start": load["load_average"]["1min"],
        **summary,
        "machine_load": finished(load),
        "environment": environment(),
        "wall_seconds": round(time.time() - started, 1),
    }
    atomic_write_json(Path(args.out), result)
    shown = ["requests", "errors", "examples_per_second", "latency_ms", "latency_ms_by_path", "server_batches", "flooder", "mid_load"]
    print(json.dumps({k: result[k] for k in shown if k in result}, indent=2))
    if args.scenario == "hostile":
        others = {m: e for m, e in result["errors_by_tenant"].items() if m in summary["tenants"] and m not in (FLOODER, HOSTILE) and e}
        print(f"errors of the well-behaved tenants: {others or 0}; refused at start: {result['refused_at_start']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
