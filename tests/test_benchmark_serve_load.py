"""benchmarks/serve_load.py --scenario hostile --short, end to end as a user runs it: a real `selectune serve` process
on loopback with a flooding tenant, a hostile delta among the deltas (and hot-loaded mid-load) and a hot reload. The
well-behaved tenants see 0 errors, the flooder gets 429s, the hostile delta is refused alone, and the JSON records
the load average."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_hostile_load_test_leaves_the_well_behaved_tenants_without_errors(tmp_path):
    out = tmp_path / "serve_load_hostile.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run([sys.executable, "benchmarks/serve_load.py", "--scenario", "hostile", "--short", "--out", str(out),
                          "--busy-ok", "a test's smoke run on a shared machine"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    tenants = result["tenants"]
    polite = [m for m in tenants if m not in ("flooder", "hostile-float-indices")]
    assert sorted(polite) == ["icu-sparse", "site00", "site01", "site02", "site03"]
    # Every well-behaved tenant: no error at all, through the flood, the refusal and the reload.
    assert result["errors"] == 0 and result["requests"] > 0, result.get("server_log_tail")
    assert all(tenants[m]["errors"] == 0 for m in polite), {m: tenants[m] for m in polite}
    assert result["latency_ms"]["p95"] is not None and result["latency_ms"]["p50"] <= result["latency_ms"]["p95"] <= result["latency_ms"]["p99"]
    # The flooder: more connections than its in-flight limit, so some of its requests were refused with 429, some answered.
    flood = result["flooder"]
    assert flood["connections"] == 3 * result["config"]["in_flight"]
    assert flood["refused_429"] > 0 and flood["answered_200"] > 0 and flood["other_statuses"] == [], flood
    # The hostile delta: refused at start on its own, its tenant told 404; hot-loaded mid-load, refused with 422.
    assert result["refused_at_start"] == ["hostile-float-indices"]
    assert tenants["hostile-float-indices"]["statuses"] == [404]
    late = result["mid_load"]["hostile_hot_load"]
    assert late["status"] == 422 and "integer" in late["detail"], late
    # The hot reload mid-load served new weights.
    reload = result["mid_load"]["reload"]
    assert reload["status"] == 200 and reload["version_after"] not in (None, reload["version_before"]), reload
    # The load average is in the JSON, with the reason this run went on regardless of it.
    start = result["machine_load"]["at_start"]
    assert start["busy_ok"] == "a test's smoke run on a shared machine" and start["load_average"]["1min"] >= 0
    assert result["load_average_at_start"] == start["load_average"]["1min"]
    # The README's paragraph is rendered from this JSON (benchmarks/readme_table.py), never typed.
    from benchmarks.serve_table import hostile_text

    text = hostile_text(result)
    assert f"**{result['requests']:,} requests with 0 errors**" in text and "refused with 422" in text
    assert f"{flood['refused_429']:,} of its {flood['requests']:,} requests refused with 429" in text
