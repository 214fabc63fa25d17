"""benchmarks/causal_lm.py --quick on the tiny random LLaMA (so the script cannot rot), and the README tables rendered
from the JSON it writes (benchmarks/readme_table.py), which the README shows once the real run exists."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.readme_table import causal_lm_tables, render_causal_lm
from selectune.tasks import CausalLM

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    folder = tmp_path_factory.mktemp("causal-bench")
    CausalLM.write_example(folder)
    out = folder / "causal_lm.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as the README runs it: the script finds the repo
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "benchmarks/causal_lm.py", "--quick", "--model", str(folder / "base"), "--busy-ok", "test",
                          "--out", str(out), "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_quick_run_trains_every_method_interleaved_with_its_seeds(quick):
    assert quick["quick"] and quick["sizes"] == {"train": 12, "validation": 6, "test": 24}
    assert quick["label_counts"]["train"] == {"negative": 4, "neutral": 4, "positive": 4}  # balanced subset
    assert [(r["method"], r["seed"]) for r in quick["runs"]] == [
        ("bitfit", 0), ("layernorm", 0), ("lora:r=8", 0), ("beft", 0), ("full", 0), ("bitfit", 1), ("lora:r=8", 1), ("bitfit", 2),
        ("lora:r=8", 2)]
    bitfit_runs = [r for r in quick["runs"] if r["method"] == "bitfit"]
    assert all(r["options"]["add_missing_biases"] is True and r["lr"] == 5e-3 for r in bitfit_runs)
    methods = quick["methods"]
    assert methods["bitfit"]["seeds"] == [0, 1, 2] and methods["full"]["seeds"] == [0]
    assert methods["bitfit"]["test"]["macro_f1"]["mean"] == pytest.approx(np.mean([r["test"]["macro_f1"] for r in bitfit_runs]))
    for summary in methods.values():
        f1 = summary["test"]["macro_f1"]
        assert f1["ci_low"] <= f1["mean"] <= f1["ci_high"]
    assert methods["full"]["step_time_ratio_to_full"] == 1.0 and methods["full"]["peak_memory_ratio_to_full"] == 1.0
    assert methods["bitfit"]["step_time_ratio_to_full"] == pytest.approx(
        methods["bitfit"]["median_step_seconds"] / methods["full"]["median_step_seconds"])
    assert methods["bitfit"]["delta_bytes"] < methods["full"]["delta_bytes"] / 100
    assert quick["zero_shot"]["seeds"] == [] and "deterministic" in quick["zero_shot"]
    assert sum(quick["zero_shot"]["predicted_labels"].values()) == 24


def test_the_goals_are_judged_from_the_measured_values(quick):
    goals = {g["goal"]: g for g in quick["goals"]}
    f1 = {m: s["test"]["macro_f1"]["mean"] for m, s in quick["methods"].items()}
    assert goals["BitFit test macro-F1 >= 0.40"]["met"] == (f1["bitfit"] >= 0.40)
    assert goals["BitFit test macro-F1 within 3 points of PEFT LoRA r=8"]["met"] == (f1["bitfit"] >= f1["lora:r=8"] - 0.03)
    memory = quick["methods"]["bitfit"]["peak_memory_ratio_to_full"]
    assert goals["BitFit peak training memory <= 0.6x full fine-tuning"]["met"] == (memory <= 0.6)
    assert goals["BitFit delta <= 1 MB (1,000,000 bytes)"]["met"] is True


def test_the_readme_tables_render_from_the_json_and_wait_for_it(quick, tmp_path):
    text = causal_lm_tables(quick)
    assert "| zero-shot (deterministic) |" in text and "| bitfit (selectune) | 0.005 | 3 |" in text
    assert "| lora:r=8 (peft) | 0.001 | 3 |" in text and "| full (selectune) | 5e-05 | 1 |" in text
    assert "(busy: test)" in text and text.count("| yes |") + text.count("| no |") == 5
    path = tmp_path / "causal_lm.json"
    assert "Not measured yet: `python benchmarks/causal_lm.py`" in render_causal_lm(path)
    path.write_text(json.dumps(quick))
    assert text in render_causal_lm(path)


def test_the_recipe_takes_epochs_subset_and_learning_rates_from_the_command_line():
    import argparse

    from benchmarks.causal_lm import RECIPE, recipe_from

    args = argparse.Namespace(epochs=3, train_per_class=None, lr=["bitfit=1e-3", "lora:r=8=3e-4"])
    recipe = recipe_from(RECIPE, args)
    assert recipe["epochs"] == 3 and recipe["train_per_class"] == RECIPE["train_per_class"]
    assert recipe["methods"]["bitfit"] == 1e-3 and recipe["methods"]["lora:r=8"] == 3e-4
    assert recipe["methods"]["full"] == RECIPE["methods"]["full"] and RECIPE["methods"]["bitfit"] == 5e-3  # the default is untouched
    for bad in (["ia3=1e-3"], ["bitfit="]):
        with pytest.raises(SystemExit, match="--lr takes METHOD=LR"):
            recipe_from(RECIPE, argparse.Namespace(epochs=None, train_per_class=None, lr=bad))
