"""benchmarks/recipe.py --quick: the headline evidence's plumbing on tiny sizes (tune per method, seeds, paired CIs, goals)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def run(tiny_bert_dir, out, methods):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user runs it: the script finds the repo
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "benchmarks/recipe.py", "--quick", "--model", tiny_bert_dir, "--tasks", "rating",
                           "--methods", methods, "--busy-ok", "test of the plumbing", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_recipe_quick_writes_settings_seed_means_paired_differences_and_goals(tiny_bert_dir, tmp_path):
    out = tmp_path / "recipe.json"
    done = run(tiny_bert_dir, out, "full,bitfit,lora:r=8")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["recipe"]["quick"] and result["recipe"]["seeds"] == [0, 1] and result["recipe"]["cv"] == 2
    assert result["machine_load"]["at_start"]["busy_ok"] == "test of the plumbing"
    rating = result["tasks"]["rating"]
    assert set(rating["methods"]) == {"full", "bitfit", "lora:r=8"}  # (the JSON is written with sorted keys)
    for name, row in rating["methods"].items():
        assert row["setting"]["epochs"] == 1 and row["setting"]["dropout"] == 0.0 and len(row["cv"]["folds"]) == 2
        assert len(row["test_outputs"]) == 2 and len(row["test_outputs"][0]) == row["sizes"]["test"] == len(row["test_labels"])
        f1 = row["test"]["macro_f1"]
        assert f1["mean"] == np.mean(row["test_macro_f1_by_seed"]) and f1["ci_low"] <= f1["mean"] <= f1["ci_high"]
    assert set(rating["bitfit_minus"]) == {"full", "lora:r=8"}
    for other, difference in rating["bitfit_minus"].items():
        expected = rating["methods"]["bitfit"]["test"]["macro_f1"]["mean"] - rating["methods"][other]["test"]["macro_f1"]["mean"]
        assert abs(difference["macro_f1"]["value"] - expected) < 1e-6  # seed-mean difference on all test rows
        assert difference["macro_f1"]["ci_low"] <= difference["macro_f1"]["value"] <= difference["macro_f1"]["ci_high"]
    # Every goal of both tasks is written; only those with both rows measured carry met = True/False.
    goals = {(g["task"], g["goal"]): g for g in result["goals"]}
    assert len(goals) == 8
    measured = {key for key, g in goals.items() if g["met"] is not None}
    assert measured == {("rating", "BitFit >= lora:r=8 (2-seed mean macro-F1)"), ("rating", "BitFit within 3 points of full fine-tuning")}
    assert goals[("rating", "BitFit within 3 points of full fine-tuning")]["met"] == (rating["bitfit_minus"]["full"]["macro_f1"]["value"] >= -0.03)
    assert goals[("rating", "BitFit >= beft (2-seed mean macro-F1)")]["difference"] is None
    assert goals[("condition", "BitFit within 2 points of full fine-tuning")]["met"] is None
    assert "rating bitfit: " in done.stdout
    # A rerun with the same recipe and data keeps the rows it has and trains nothing.
    again = run(tiny_bert_dir, out, "bitfit")
    assert again.returncode == 0 and "rating bitfit" not in again.stdout
    assert json.loads(out.read_text())["tasks"]["rating"]["methods"] == rating["methods"]
