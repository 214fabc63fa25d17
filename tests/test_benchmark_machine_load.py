"""benchmarks/machine_load.py: a real load-average reading against the threshold given, refusal without a reason,
the reason recorded with one; and a timing benchmark refuses a busy machine before it measures anything."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.machine_load import MachineBusy, add_load_flags, cores, finished, machine_load

ROOT = Path(__file__).resolve().parent.parent


def test_a_reading_below_the_threshold_is_recorded_and_passes():
    record = machine_load(threshold=10_000)
    one = record["load_average"]["1min"]
    assert 0 <= one < 10_000 and abs(one - os.getloadavg()[0]) < 5  # the OS's own reading, not a made-up one
    assert record["threshold"] == 10_000 and record["busy"] is False and record["busy_ok"] is None
    assert record["cores"] == cores() >= 1


def test_a_reading_above_the_threshold_is_refused_without_a_reason():
    # Any real load average is >= 0, so it exceeds a negative threshold.
    with pytest.raises(MachineBusy, match=r"load average \d+\.\d\d over the last minute exceeds -1 \(the threshold\).*--busy-ok REASON"):
        machine_load(threshold=-1)


def test_a_reason_lets_a_busy_run_go_on_and_is_recorded():
    record = machine_load(busy_ok="smoke run in a test", threshold=-1)
    assert record["busy"] is True and record["busy_ok"] == "smoke run in a test" and record["threshold"] == -1
    with pytest.raises(ValueError, match="needs a reason"):
        machine_load(busy_ok="  ", threshold=-1)
    done = finished(record)
    assert done["at_start"] is record and set(done["at_end"]) == {"1min", "5min", "15min"}


def test_the_default_threshold_is_the_core_count():
    record = machine_load(busy_ok="either way")
    assert record["threshold"] == cores()
    assert record["busy"] == (record["load_average"]["1min"] > cores())


def test_the_flags_take_a_reason_and_a_threshold():
    parser = argparse.ArgumentParser()
    add_load_flags(parser)
    assert vars(parser.parse_args([])) == {"busy_ok": None, "max_load": None}
    assert vars(parser.parse_args(["--busy-ok", "why", "--max-load", "3.5"])) == {"busy_ok": "why", "max_load": 3.5}


def test_a_timing_benchmark_refuses_a_busy_machine_before_it_measures(tmp_path):
    # --max-load -1: any real load is "busy". The script must stop at once (no model loaded, no JSON).
    out = tmp_path / "dropout_cost.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "benchmarks/dropout_cost.py", "--out", str(out), "--max-load", "-1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 1 and "the machine is busy" in run.stderr and "Traceback" not in run.stderr, run.stderr[-800:]
    assert not out.exists()
