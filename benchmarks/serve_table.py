"""The README's serving results, from benchmarks/results/serve_*.json (never typed by hand).

`benchmarks/readme_table.py` renders it (block "serve-results") with the other README blocks:

    python benchmarks/readme_table.py --write
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def render_body() -> str:
    t = json.loads((RESULTS / "serve_throughput.json").read_text())
    c = t["config"]
    lines = [
        f"Forward-pass throughput on MiniLM, CPU ({c['torch_threads']} threads, a shared machine: load average "
        f"{t['load_average_at_start']:.1f} at start), batch {c['batch_size']} × up to {c['max_length']} tokens of drug reviews, "
        f"median of {c['rounds']} interleaved rounds (`python benchmarks/serve_throughput.py`; BitFit deltas are synthetic: "
        f"real BitFit selections with perturbed biases). Examples of one batch are spread round-robin over the deltas.",
        "",
        "| configuration | examples/s | × merged |",
        "|---|---|---|",
    ]
    for row in t["rows"]:
        lines.append(f"| {row['config']} | {row['examples_per_second']:.1f} | {row['vs_merged']:.2f} |")
    spread = max((max(r["rounds"]) - min(r["rounds"])) / r["examples_per_second"] for r in t["rows"])
    lines += ["", f"16 deltas in one batch run at **{t['mixed16_vs_merged']:.2f}×** the merged model and "
                  f"**{t['mixed16_vs_lora16']:.2f}×** PEFT LoRA's mixed batch with 16 adapters; every example equals its "
                  f"delta merged alone (max |logit difference| {t['max_abs_logit_diff_mixed16_vs_each_delta_alone']:.1e}). "
                  f"A mixed batch does strictly more work than the merged model (a (B, out) gather and add per layer, heads "
                  f"per group), so ratios above 1 are noise: on this shared machine rounds of one configuration differ by up "
                  f"to {spread:.0%} of their median."]
    load = RESULTS / "serve_load.json"
    if load.is_file():
        s = json.loads(load.read_text())
        lat, b = s["latency_ms"], s["server_batches"]
        lines += ["", f"Load test (`python benchmarks/serve_load.py`): {s['config']['clients']} concurrent clients for "
                      f"{s['duration_s']:.0f} s on loopback against `selectune serve` ({s['config']['models']}; load average "
                      f"{s['load_average_at_start']:.1f} at start): **{s['requests']} requests, {s['errors']} errors**, "
                      f"{s['examples_per_second']:.1f} examples/s, latency p50 {lat['p50']:,.0f} ms, p95 {lat['p95']:,.0f} ms, "
                      f"p99 {lat['p99']:,.0f} ms; mixed batches held {b['mean_examples_per_mixed_batch']:.1f} examples of "
                      f"{b['mean_deltas_per_mixed_batch']:.1f} deltas on average."]
    return "\n".join(lines)
