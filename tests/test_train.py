"""Training end to end on real tabular medical data, determinism, and multi-process Accelerate."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from selectune.cli import main
from selectune.data import BUNDLED, export_bundled
from selectune.delta import DELTA_WEIGHTS, read_delta
from selectune.train.tabular import TabularMLP

FEATURES = ",".join(BUNDLED["breast-cancer"].feature_cols)


@pytest.fixture(scope="module")
def cancer_parts(tmp_path_factory):
    """Breast cancer as `selectune data` exports it: old.csv (300, the base's) and new.csv (269, the update's)."""
    out = tmp_path_factory.mktemp("cancer")
    files = export_bundled("breast-cancer", str(out))
    assert pd.read_csv(files["old"]).shape[0] == 300 and pd.read_csv(files["new"]).shape[0] == 269
    return out


def run_cli(*argv):
    assert main([str(a) for a in argv]) == 0


def test_tabular_base_then_bitfit_update_changes_only_biases(cancer_parts, tmp_path):
    d = cancer_parts
    run_cli("train", d / "old.csv", "--model", "mlp", "--method", "full", "--feature-cols", FEATURES, "--label-col", "label",
            "--lr", "1e-3", "--epochs", "8", "--out", tmp_path / "base", "--no-progress")
    base_metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert base_metrics["trainable_percent"] == 100.0
    assert (tmp_path / "base" / "model" / "model.safetensors").is_file()

    run_cli("train", d / "new.csv", "--model", tmp_path / "base" / "model", "--method", "bitfit", "--feature-cols", FEATURES,
            "--label-col", "label", "--test-fraction", "0.25", "--epochs", "5", "--out", tmp_path / "update", "--no-progress")
    metrics = json.loads((tmp_path / "update" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 68  # 25% of the 269 new patients, stratified
    assert metrics["test"]["accuracy"] > 0.85  # real data, a real model: well above the 0.63 majority rate
    assert metrics["test"]["accuracy"] > metrics["majority_baseline"]["accuracy"] + 0.2

    tensors, config = read_delta(tmp_path / "update" / "delta")
    assert all(n.endswith(".bias") for n in tensors), sorted(tensors)
    # merge -> a plain model folder; only biases differ from the base, and predictions match the delta's
    run_cli("merge", tmp_path / "update" / "delta", tmp_path / "merged")
    base = TabularMLP.from_pretrained(tmp_path / "base" / "model").state_dict()
    merged = TabularMLP.from_pretrained(tmp_path / "merged").state_dict()
    changed = {n for n in base if not torch.equal(base[n], merged[n])}
    assert changed and changed <= set(tensors) and all(n.endswith(".bias") for n in changed)
    run_cli("evaluate", d / "new.csv", "--delta", tmp_path / "update" / "delta", "--out", tmp_path / "eval_delta.json")
    run_cli("evaluate", d / "new.csv", "--model", tmp_path / "merged", "--out", tmp_path / "eval_merged.json")
    a = json.loads((tmp_path / "eval_delta.json").read_text())["metrics"]
    b = json.loads((tmp_path / "eval_merged.json").read_text())["metrics"]
    assert a == b and a["accuracy"] > 0.85  # delta-on-base and merged model agree exactly
    run_cli("predict", d / "new.csv", "--delta", tmp_path / "update" / "delta", "--out", tmp_path / "pred.csv")
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == 269 and set(pred["prediction"]) <= {"benign", "malignant"}
    assert (pred[["prob_benign", "prob_malignant"]].sum(axis=1) - 1).abs().max() < 1e-5
    assert (pred["prediction"] == pred["label"]).mean() == pytest.approx(a["accuracy"])


def test_tabular_regression(tmp_path):
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame  # 442 patients, disease progression after one year
    frame.to_csv(tmp_path / "diab.csv", index=False)
    features = ",".join(c for c in frame.columns if c != "target")
    run_cli("train", tmp_path / "diab.csv", "--model", "mlp", "--method", "full", "--task", "regression", "--feature-cols", features,
            "--label-col", "target", "--test-fraction", "0.2", "--lr", "3e-3", "--epochs", "30", "--out", tmp_path / "reg", "--no-progress")
    metrics = json.loads((tmp_path / "reg" / "metrics.json").read_text())
    assert metrics["test"]["r2"] > 0.3  # linear models reach ~0.45 here; a constant predictor gets <= 0
    assert metrics["test"]["mae"] < 55  # the target's own MAE around its mean is ~65


def test_same_seed_gives_identical_delta_bytes(tiny_bert_dir, tiny_text_csvs, tmp_path):
    train, test = tiny_text_csvs
    outs = []
    for name in ("a", "b", "c"):
        seed = "1" if name == "c" else "0"
        run_cli("train", train, "--test", test, "--model", tiny_bert_dir, "--text-col", "text", "--label-col", "label",
                "--epochs", "2", "--batch-size", "8", "--seed", seed, "--out", tmp_path / name, "--no-progress")
        outs.append((tmp_path / name / "delta" / DELTA_WEIGHTS).read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_accelerate_launch_two_processes(cancer_parts, tmp_path):
    """`accelerate launch` runs the same entry point on 2 CPU processes (DDP over gloo; --multi_gpu starts torchrun)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "selectune.cli", "train", str(cancer_parts / "old.csv"),
           "--model", "mlp", "--method", "full", "--feature-cols", FEATURES, "--label-col", "label", "--lr", "1e-3",
           "--epochs", "3", "--test-fraction", "0.2", "--out", str(tmp_path / "ddp"), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((tmp_path / "ddp" / "run_config.json").read_text())
    assert config["num_processes"] == 2
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 60  # gather_for_metrics drops the padding duplicates
    assert metrics["test"]["accuracy"] > 0.85
    assert not list(tmp_path.glob(".ddp.partial-*"))
