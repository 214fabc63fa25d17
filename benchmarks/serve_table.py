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
        f"Forward-pass throughput on MiniLM, CPU ({c['torch_threads']} threads, load average "
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
                  f"per group), so a ratio above 1 would be noise; rounds of one configuration differ by up to {spread:.0%} of "
                  f"their median here."]
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
    for name, text in (("serve_load_hostile.json", hostile_text), ("serve_memory.json", memory_text)):
        if (RESULTS / name).is_file():
            lines += ["", text(json.loads((RESULTS / name).read_text()))]
    memory = RESULTS / "serve_memory.json"
    if memory.is_file():
        lines += ["", goals_text(t, json.loads(memory.read_text()))]
    return "\n".join(lines)


# The serving goals of the hardening issue (issue 13), stated beside what was measured.
GOAL_MIXED64_VS_MERGED = 0.97
GOAL_EXTRA_MB_PER_1000 = 200


def goals_text(t: dict, m: dict) -> str:
    """Met or not, from the same JSON as the paragraphs above."""
    mixed64 = next(r["vs_merged"] for r in t["rows"] if r["config"].startswith("selectune mixed, 64 "))
    per_1000 = m["extra_rss_mb"] * 1000 / m["server_with_deltas"]["deltas_served"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return (f"Goals: mixed batch over 64 BitFit deltas >= {GOAL_MIXED64_VS_MERGED:.2f}x the merged model: "
            f"{mixed64:.2f}x, {verdict(mixed64 >= GOAL_MIXED64_VS_MERGED)} (medians of interleaved rounds; see the spread "
            f"above); 1,000 deltas resident under {GOAL_EXTRA_MB_PER_1000} MB above the one-delta server: "
            f"{per_1000:,.0f} MB, {verdict(per_1000 < GOAL_EXTRA_MB_PER_1000)}.")


def hostile_text(h: dict) -> str:
    """The paragraph of `serve_load.py --scenario hostile`: what the other tenants saw while one flooded, one sent a
    hostile delta and a delta was hot-reloaded."""
    lat, flood, mid, c = h["latency_ms"], h["flooder"], h["mid_load"], h["config"]
    others = sum(e for m, e in h["errors_by_tenant"].items() if m not in ("flooder", "hostile-float-indices"))
    return (f"Hostile load test (`python benchmarks/serve_load.py --scenario hostile`): {c['clients']} clients over "
            f"{c['deltas']} BitFit deltas and 1 sparse delta for {h['duration_s']:.0f} s (load average {h['load_average_at_start']:.1f} "
            f"at start), while one tenant flooded ({flood['connections']} connections back to back: {flood['refused_429']:,} of its "
            f"{flood['requests']:,} requests refused with 429), a delta with float sparse indices sat among the deltas (refused "
            f"at start; hot-loaded mid-load, refused with {mid['hostile_hot_load']['status']}) and {mid['reload']['model']} was "
            f"hot-reloaded with new weights mid-load ({mid['reload']['status']}, {mid['reload']['seconds']:.1f} s): the other "
            f"tenants sent **{h['requests']:,} requests with {others} errors**, latency p50 {lat['p50']:,.0f} ms, "
            f"p95 {lat['p95']:,.0f} ms, p99 {lat['p99']:,.0f} ms.")


def memory_text(m: dict) -> str:
    """The paragraph of `serve_memory.py`: resident memory of N BitFit deltas in one server against one delta."""
    one, many = m["base_server_one_delta"], m["server_with_deltas"]
    return (f"Memory (`python benchmarks/serve_memory.py`): {many['deltas_served']:,} BitFit deltas in one server hold "
            f"**{m['extra_rss_mb']:,.0f} MB** of resident memory above the same server with one delta ({one['rss_mb']:,.0f} MB "
            f"→ {many['rss_mb']:,.0f} MB VmRSS after one request; {m['extra_rss_per_delta_kb']:,.0f} KB per delta, whose file "
            f"is {m['delta_files_bytes'] / 1000:,.0f} KB); it started in {many['startup_seconds']:,.0f} s.")
