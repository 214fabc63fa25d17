"""`selectune gate` on real trained models: a harmful update fails on its subgroup row, a good one passes,
criteria are validated strictly (nothing written, exit 2), and the files hold what a report needs."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from selectune.cli import main
from selectune.data import export_bundled
from selectune.data.bundled import CANCER_FEATURES
from selectune.evaluate.criteria import CriteriaError, load_criteria
from selectune.evaluate.gate import compatible, resolve_positive_label
from selectune.tasks import TabularClassification, TextClassification
from tests.test_cli_errors import fails

FEATURES = ",".join(CANCER_FEATURES + ("site",))
CRITERIA = """\
description: breast-cancer update, criteria agreed before evaluation
criteria:
  - id: auroc-non-inferior
    metric: auroc
    rule: non_inferior
    margin: 0.05
  - id: no-site-loses-auroc
    metric: auroc
    rule: max_subgroup_drop
    max_drop: 0.05
  - {id: calibrated, metric: ece, rule: max, value: 0.2}
  - {id: sensitive, metric: sensitivity, rule: min, value: 0.6}
"""


def train(argv):
    assert main(["train", *map(str, argv), "--no-progress"]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Breast cancer with a random 'site' (0/1) that the models see as a feature: a base trained on 250
    patients, a good update and a harmful one (labels flipped at site 1) on 169 more, 150 held out for test."""
    root = tmp_path_factory.mktemp("gate")
    frame = pd.read_csv(export_bundled("breast-cancer", str(root / "bc"))["data"])
    rng = np.random.default_rng(0)
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    frame["site"] = rng.integers(0, 2, len(frame))
    paths = {name: root / f"{name}.csv" for name in ("old", "new", "harmful", "test")}
    frame.iloc[:250].to_csv(paths["old"], index=False)
    frame.iloc[250:419].to_csv(paths["new"], index=False)
    frame.iloc[419:].to_csv(paths["test"], index=False)
    harmful = frame.iloc[250:419].copy()
    flip = harmful["site"] == 1
    harmful.loc[flip, "label"] = harmful.loc[flip, "label"].map({"malignant": "benign", "benign": "malignant"})
    harmful.to_csv(paths["harmful"], index=False)
    common = ["--feature-cols", FEATURES, "--method", "full", "--epochs", "8"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 6k-parameter MLP: one thread is ~8x faster than two contending ones on a busy machine
    try:
        train([paths["old"], "--model", "mlp", "--out", root / "base", "--lr", "1e-3", *common])
        for name in ("new", "harmful"):
            train([paths[name], "--model", root / "base" / "model", "--out", root / name.replace("new", "good"), "--lr", "3e-3", *common])
    finally:
        torch.set_num_threads(threads)
    (root / "criteria.yaml").write_text(CRITERIA)
    return {"root": root, "test": paths["test"], "criteria": root / "criteria.yaml", "frame": frame}


def gate_argv(runs, update, out, *extra, base=None, criteria=None):
    root = runs["root"]
    return ["gate", "--base", str(base or root / "base"), "--update", str(update), "--criteria", str(criteria or runs["criteria"]),
            "--test", str(runs["test"]), "--group-cols", "site", "--out", str(out), "--resamples", "400", *map(str, extra)]


def read(out, name="gate.json"):
    return json.loads((Path(out) / name).read_text())


# ---------------------------------------------------------------- the verdicts

def test_harmful_update_fails_on_the_subgroup_row(runs, tmp_path, capsys):
    out = tmp_path / "gate-harmful"
    assert main(gate_argv(runs, runs["root"] / "harmful", out)) == 1
    printed = capsys.readouterr().out
    rows = {r["id"]: r for r in read(out)["rows"]}
    subgroup = rows["no-site-loses-auroc"]
    assert subgroup["passed"] is False
    judged = {j["group"]: j for j in subgroup["values"]["judged"]}
    assert judged["1"]["passed"] is False and judged["1"]["worse_by"] > 0.3  # the flipped site collapses
    assert judged["1"]["worse_by"] > judged["0"]["worse_by"] + 0.2  # far more than the untouched site
    assert "site=1" in subgroup["evidence"] and "exceed" in subgroup["evidence"]
    assert "FAIL" in printed and "gate FAILED" in printed and "no-site-loses-auroc" in printed.split("gate FAILED")[1]
    assert read(out)["passed"] is False and "exit_code" not in read(out)  # the CLI maps passed to the exit code


def test_good_update_passes_every_row(runs, tmp_path, capsys):
    out = tmp_path / "gate-good"
    assert main(gate_argv(runs, runs["root"] / "good", out)) == 0
    record = read(out)
    assert record["passed"] is True and "exit_code" not in record
    assert [r["passed"] for r in record["rows"]] == [True] * 4
    assert "gate PASSED" in capsys.readouterr().out
    evaluation = read(out, "evaluation.json")
    site = {row["group"]: row for row in evaluation["subgroups"]["site"]}
    assert site["0"]["n"] + site["1"]["n"] == 150 and not site["0"]["small"]
    # the non-inferiority row judged the paired CI's lower bound against -margin
    row = record["rows"][0]
    assert row["values"]["difference"]["ci_low"] >= -0.05
    assert row["values"]["difference"] == evaluation["paired_differences"]["auroc"]


def test_files_hold_what_the_report_needs(runs, tmp_path):
    out = tmp_path / "gate-files"
    assert main(gate_argv(runs, runs["root"] / "good", out, "--seed", "3")) == 0
    record, evaluation = read(out), read(out, "evaluation.json")
    criteria_bytes = runs["criteria"].read_bytes()
    assert record["criteria"]["sha256"] == "sha256:" + hashlib.sha256(criteria_bytes).hexdigest()
    assert record["criteria"]["text"] == CRITERIA and (out / "criteria.yaml").read_bytes() == criteria_bytes
    assert record["evaluation_sha256"] == "sha256:" + hashlib.sha256((out / "evaluation.json").read_bytes()).hexdigest()
    for role in ("base", "update"):
        model = evaluation["models"][role]
        identity = model["identity"]
        assert identity["delta_weights_sha256"].startswith("sha256:") and identity["base_fingerprint"].startswith("sha256:")
        assert identity["run_config"]["feature_cols"][-1] == "site" and identity["run_metrics"]["method"] == "full"
        assert model["threshold"]["validation"]["source"] == "validation split of the training run"
        assert 0 < model["threshold"]["value"] < 1
        assert set(model["metrics"]) == {"auroc", "auprc", "accuracy", "macro_f1", "sensitivity", "specificity", "ppv", "npv",
                                         "brier", "ece"}
        assert list(model["curves"]["roc"]) == ["malignant"] and model["curves"]["calibration"]["bins"] == 10
        assert sum(model["confusion"].values()) == 150
    assert evaluation["task"]["positive_label"] == "malignant" and evaluation["settings"]["seed"] == 3
    assert evaluation["data"]["test"]["sha256"] == "sha256:" + hashlib.sha256(runs["test"].read_bytes()).hexdigest()
    assert {"fairlearn", "scikit-learn", "torch"} <= set(evaluation["environment"])
    checks = evaluation["data"]["checks"]
    assert {r["check"]: r["status"] for r in checks["update"]["results"]}["duplicate_leakage"] == "pass"
    assert checks["base"]["splits"]["train"]["rows"] == 250 and checks["update"]["splits"]["test"]["rows"] == 150
    assert set(evaluation["fairness"]["site"]["update"]) == {"demographic_parity_difference", "equalized_odds_difference", "by_group"}
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 150 and "mean_radius" not in predictions  # no input data copied
    assert list(predictions.columns[:3]) == ["row", "label", "site"]
    assert sorted(p.name for p in out.iterdir()) == ["criteria.yaml", "evaluation.json", "gate.json", "predictions.csv"]


def test_same_seed_same_evidence_and_every_source_form(runs, tmp_path):
    # A run folder, its delta/ and a merged model are the same update: identical numbers.
    root = runs["root"]
    assert main(["merge", str(root / "good" / "delta"), str(tmp_path / "merged")]) == 0
    results = []
    for i, update in enumerate([root / "good", root / "good" / "delta", tmp_path / "merged"]):
        assert main(gate_argv(runs, update, tmp_path / f"g{i}")) == 0
        evaluation = read(tmp_path / f"g{i}", "evaluation.json")
        results.append({k: evaluation[k] for k in ("paired_differences", "subgroups", "fairness")})
        results[-1]["metrics"] = {r: evaluation["models"][r]["metrics"] for r in ("base", "update")}
    assert results[0] == results[1] == results[2]
    assert read(tmp_path / "g2", "evaluation.json")["models"]["update"]["identity"]["kind"] == "merged"


def test_threshold_from_a_validation_file_and_a_fixed_rule(runs, tmp_path):
    validation = tmp_path / "val.csv"
    runs["frame"].iloc[200:250].to_csv(validation, index=False)
    assert main(gate_argv(runs, runs["root"] / "good", tmp_path / "v", "--validation", validation,
                          "--threshold-rule", "sensitivity=0.95")) == 0
    threshold = read(tmp_path / "v", "evaluation.json")["models"]["update"]["threshold"]
    assert threshold["rule"] == "sensitivity=0.95" and threshold["validation"]["path"] == str(validation.resolve())
    assert main(gate_argv(runs, runs["root"] / "good", tmp_path / "f", "--threshold-rule", "fixed=0.5")) == 0
    assert read(tmp_path / "f", "evaluation.json")["models"]["base"]["threshold"] == {"value": 0.5, "rule": "fixed=0.5", "validation": None}


# ---------------------------------------------------------------- refusals: exit 2, nothing written

BAD_CRITERIA = [
    ("criteria:\n  - {metric: aucroc, rule: min, value: 0.5}\n", ["criteria[0]", "unknown metric 'aucroc'", "valid metrics:", "auroc"]),
    ("criteria:\n  - {metric: auroc, rule: at_least, value: 0.5}\n", ["unknown rule 'at_least'", "valid rules: min, max, non_inferior"]),
    ("criteria:\n  - {metric: auroc, rule: min, value: 0.5, margin: 0.1}\n", ["unknown key(s) ['margin']", "valid keys:"]),
    ("criteria:\n  - {metric: auroc, rule: non_inferior}\n", ["rule 'non_inferior' needs margin"]),
    ("criteria:\n  - {metric: auroc, rule: min, value: '0.8'}\n", ["value must be a number", "'0.8'"]),
    ("criteria:\n  - {metric: auroc, rule: non_inferior, margin: -0.1}\n", ["margin must be >= 0"]),
    ("criteria:\n  - {metric: sensitivity, rule: min, value: 0.8, use: ci_high}\n", ["use must be one of point, ci_low"]),
    ("criteria:\n  - {metric: auroc, rule: min, value: 0.5, value: 0.9}\n", ["key 'value' appears twice"]),
    ("criteria:\n  - {metric: auroc, rule: min, value: 0.5}\n  - {metric: auroc, rule: min, value: 0.6}\n", ["'auroc min'", "used twice"]),
    ("criteria: [\n", ["not valid YAML"]),
    ("- {metric: auroc, rule: min, value: 0.5}\n", ["must be a YAML mapping with a 'criteria:' list"]),
    ("criteria: []\n", ["non-empty list"]),
    ("threshold: youden\ncriteria:\n  - {metric: auroc, rule: min, value: 0.5}\n", ["unknown top-level key(s) ['threshold']"]),
    ("criteria:\n  - {metric: equalized_odds_difference, rule: non_inferior, margin: 0.1}\n", ["takes the rule max or max_worsening"]),
    ("criteria:\n  - {metric: rmse, rule: max, value: 1.0}\n", ["uses rmse", "classification model does not have",
                                                              "valid metrics for classification:"]),
    ("criteria:\n  - {metric: auroc, rule: max_subgroup_drop, max_drop: 0.1, group_col: sex}\n", ["'sex'", "not among --group-cols"]),
]


@pytest.mark.parametrize("text,expected", BAD_CRITERIA, ids=[e[0] for _, e in BAD_CRITERIA])
def test_bad_criteria_are_refused_before_any_model_runs(runs, tmp_path, capsys, text, expected):
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text(text)
    out = tmp_path / "gate"
    fails(capsys, gate_argv(runs, runs["root"] / "good", out, criteria=criteria), out, str(criteria), *expected, watch=[runs["root"]])


def test_other_refusals(runs, tmp_path, capsys):
    root, out = runs["root"], tmp_path / "gate"
    fails(capsys, gate_argv(runs, root / "good", out, criteria=tmp_path / "none.yaml"), out, "criteria file not found", "none.yaml")
    subgroup_only = tmp_path / "sub.yaml"
    subgroup_only.write_text("criteria:\n  - {metric: auroc, rule: max_subgroup_drop, max_drop: 0.1}\n")
    argv = gate_argv(runs, root / "good", out, criteria=subgroup_only)
    fails(capsys, [a for a in argv if a not in ("--group-cols", "site")], out, "no --group-cols were given", "--group-cols COLUMN")
    argv = gate_argv(runs, root / "good", out)
    fails(capsys, argv[:argv.index("site")] + ["ward"] + argv[argv.index("site") + 1:], out, "['ward'] not found in", "test.csv")
    fails(capsys, gate_argv(runs, tmp_path / "nowhere", out), out, "--update", "nowhere", "not found", "selectune train --out")
    fails(capsys, gate_argv(runs, root / "good", out, "--positive-label", "maybe"), out, "'maybe' is not one of", "benign")
    fails(capsys, gate_argv(runs, root / "good", out, "--threshold-rule", "best"), out, "threshold rule 'best'", "youden")
    fails(capsys, gate_argv(runs, root / "good", out, "--resamples", "3"), out, "--resamples must be at least 10")
    out.mkdir()
    fails(capsys, gate_argv(runs, root / "good", out), out, "already exists", "--overwrite")


def test_test_rows_a_model_trained_on_are_refused(runs, tmp_path, capsys):
    leaky = tmp_path / "leaky-test.csv"
    pd.concat([pd.read_csv(runs["test"]), runs["frame"].iloc[300:303]]).to_csv(leaky, index=False)  # 3 of the update's training rows
    argv = gate_argv(runs, runs["root"] / "good", tmp_path / "gate")
    argv[argv.index("--test") + 1] = str(leaky)
    fails(capsys, argv, tmp_path / "gate", "update", "new.csv, which overlaps the test file", "leaky-test.csv", "3 identical rows", "test rows 151, 152, 153",
          "test rows neither model has seen")


def test_validation_split_is_not_rebuilt_from_a_changed_training_file(runs, tmp_path, capsys):
    frame = runs["frame"]
    data = tmp_path / "new.csv"
    frame.iloc[250:419].to_csv(data, index=False)
    train([data, "--model", runs["root"] / "base" / "model", "--out", tmp_path / "run", "--feature-cols", FEATURES,
           "--method", "bitfit", "--epochs", "1"])
    frame.iloc[250:418].to_csv(data, index=False)  # one row fewer: the recorded sha256 no longer matches
    out = tmp_path / "gate"
    fails(capsys, gate_argv(runs, tmp_path / "run", out), out, "new.csv", "changed since training", "--validation FILE")


def test_a_run_without_validation_rows_needs_a_validation_file(runs, tmp_path, capsys):
    data = tmp_path / "new.csv"
    runs["frame"].iloc[250:419].to_csv(data, index=False)
    train([data, "--model", runs["root"] / "base" / "model", "--out", tmp_path / "run", "--feature-cols", FEATURES,
           "--method", "bitfit", "--epochs", "1", "--val-fraction", "0"])
    out = tmp_path / "gate"
    fails(capsys, gate_argv(runs, tmp_path / "run", out), out, "--val-fraction 0 (no validation rows)", "pass --validation FILE")


def test_criteria_file_is_validated_alone():
    with pytest.raises(CriteriaError, match="unknown metric 'f1'"):
        load_criteria_text("criteria:\n  - {metric: f1, rule: min, value: 0.5}\n")
    parsed = load_criteria_text(CRITERIA)
    assert [c.id for c in parsed.criteria] == ["auroc-non-inferior", "no-site-loses-auroc", "calibrated", "sensitive"]
    assert parsed.criteria[1].params == {"max_drop": 0.05, "group_col": None, "use": "point", "include_small_groups": False}


def load_criteria_text(text, tmp=Path("/tmp")):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(text)
        return load_criteria(str(path))


def test_positive_label_and_compatibility_rules():
    three = TextClassification(label_col="rating", labels=["negative", "neutral", "positive"], text_col="review")
    with pytest.raises(ValueError, match="3 classes .* --positive-label"):
        resolve_positive_label(three, None)
    assert resolve_positive_label(three, "negative") == "negative"
    two = TabularClassification(label_col="label", labels=["benign", "malignant"], feature_cols=["a"])
    assert resolve_positive_label(two, None) == "malignant"

    class Source:
        def __init__(self, task):
            self.task = task

    with pytest.raises(ValueError, match="different questions"):
        compatible(Source(two), Source(three))
