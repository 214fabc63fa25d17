"""benchmarks/serve_memory.py in a smoke run, as a user runs it: two real `selectune serve` processes (one delta, then
a few), each answering a request, their resident memory read from /proc and written as JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_memory_benchmark_measures_both_servers(tmp_path):
    out = tmp_path / "serve_memory.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run([sys.executable, "benchmarks/serve_memory.py", "--deltas", "4", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    one, many = result["base_server_one_delta"], result["server_with_deltas"]
    assert (one["deltas_served"], many["deltas_served"], one["refused"], many["refused"]) == (1, 4, 0, 0)
    assert one["paths"] == many["paths"] == ["mixed"]
    for server in (one, many):
        # A server process holding MiniLM's 90 MB of weights, read from the kernel: resident now <= its peak.
        assert 90 < server["rss_mb"] <= server["peak_rss_mb"] < 100_000, server
    assert result["extra_rss_mb"] == round(many["rss_mb"] - one["rss_mb"], 1)
    assert result["extra_rss_per_delta_kb"] == round(result["extra_rss_mb"] * 1000 / 3, 1)
    assert 10_000 < result["delta_files_bytes"] < 1_000_000  # a BitFit delta of MiniLM: biases and the classifier
    assert result["machine_load"]["at_start"]["busy_ok"].startswith("memory figures")
    from benchmarks.serve_table import memory_text  # the README's paragraph, rendered from this JSON

    text = memory_text(result)
    assert text.startswith("Memory (`python benchmarks/serve_memory.py`): 4 BitFit deltas in one server hold ")
    assert f"{one['rss_mb']:,.0f} MB → {many['rss_mb']:,.0f} MB VmRSS" in text
