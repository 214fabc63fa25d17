"""Each criterion rule judged on hand-made evidence, in both metric directions, and a regression gate end to end."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from selectune.cli import main
from selectune.evaluate.criteria import Criterion, judge


def est(value, low=None, high=None):
    return {"value": value, "ci_low": low, "ci_high": high, "valid_resamples": 1000}


def evidence(metric, base, update, diff, subgroups=None, fairness=None):
    return {"models": {"base": {"metrics": {metric: base}}, "update": {"metrics": {metric: update}}},
            "paired_differences": {metric: diff}, "subgroups": subgroups or {}, "fairness": fairness or {}}


def rule(metric, name, **params):
    defaults = {"min": {"use": "point"}, "max": {"use": "point", "group_col": None}, "non_inferior": {}, "superior": {"margin": 0.0},
                "max_worsening": {"group_col": None},
                "max_subgroup_drop": {"group_col": None, "use": "point", "include_small_groups": False}}[name]
    return Criterion(id=f"{metric} {name}", metric=metric, rule=name, params={**defaults, **params})


@pytest.mark.parametrize("metric,diff,margin,passed", [
    ("auroc", est(-0.01, -0.04, 0.02), 0.05, True),    # higher is better: lower bound -0.04 >= -0.05
    ("auroc", est(-0.01, -0.06, 0.02), 0.05, False),   # lower bound -0.06 < -0.05
    ("rmse", est(0.5, -1.0, 2.0), 2.5, True),          # lower is better: upper bound 2.0 <= +2.5
    ("rmse", est(0.5, -1.0, 3.0), 2.5, False),
    ("ece", est(-0.02, -0.05, 0.01), 0.0, False),      # margin 0: any plausible worsening fails
    ("auroc", est(None), 0.05, False),                 # no evidence is not a pass
])
def test_non_inferior(metric, diff, margin, passed):
    row = judge(rule(metric, "non_inferior", margin=margin), evidence(metric, est(0.8), est(0.79), diff), 0.95)
    assert row["passed"] is passed
    assert ("lower bound" if metric == "auroc" else "upper bound") in row["evidence"]


@pytest.mark.parametrize("metric,diff,passed", [
    ("auroc", est(0.05, 0.01, 0.09), True), ("auroc", est(0.05, -0.01, 0.09), False),
    ("brier", est(-0.05, -0.09, -0.01), True), ("brier", est(-0.05, -0.09, 0.01), False),
])
def test_superior(metric, diff, passed):
    assert judge(rule(metric, "superior"), evidence(metric, est(0.8), est(0.85), diff), 0.95)["passed"] is passed


def test_min_max_on_point_or_ci_bound():
    ev = evidence("sensitivity", est(0.9), est(0.82, 0.75, 0.88), est(-0.08))
    assert judge(rule("sensitivity", "min", value=0.8), ev, 0.95)["passed"] is True
    row = judge(rule("sensitivity", "min", value=0.8, use="ci_low"), ev, 0.95)
    assert row["passed"] is False and "ci low 0.750 not >= 0.8" in row["evidence"]
    ev = evidence("ece", est(0.1), est(0.08, 0.05, 0.12), est(-0.02))
    assert judge(rule("ece", "max", value=0.1), ev, 0.95)["passed"] is True
    assert judge(rule("ece", "max", value=0.1, use="ci_high"), ev, 0.95)["passed"] is False


def test_max_worsening_follows_the_direction():
    assert judge(rule("mae", "max_worsening", value=0.5), evidence("mae", est(3.0), est(3.4), est(0.4)), 0.95)["passed"] is True
    assert judge(rule("mae", "max_worsening", value=0.5), evidence("mae", est(3.0), est(3.6), est(0.6)), 0.95)["passed"] is False
    assert judge(rule("r2", "max_worsening", value=0.05), evidence("r2", est(0.5), est(0.44), est(-0.06)), 0.95)["passed"] is False


def subgroup_row(group, n, base, update, diff, small=False):
    return {"group": group, "n": n, "small": small, "ci_reliable": not small,
            "metrics": {"base": {"auroc": est(base)}, "update": {"auroc": est(update)}}, "difference": {"auroc": diff}}


def test_subgroup_drop_skips_small_groups_unless_asked_and_can_judge_the_ci():
    subgroups = {"site": [subgroup_row("A", 200, 0.90, 0.89, est(-0.01, -0.03, 0.01)),
                          subgroup_row("B", 80, 0.90, 0.86, est(-0.04, -0.09, 0.01)),
                          subgroup_row("C", 12, 0.90, 0.60, est(-0.30, -0.55, -0.05), small=True)]}
    ev = evidence("auroc", est(0.9), est(0.88), est(-0.02), subgroups=subgroups)
    row = judge(rule("auroc", "max_subgroup_drop", max_drop=0.05), ev, 0.95)
    assert row["passed"] is True and "not judged (n < min-group-n): site=C (n=12)" in row["evidence"]
    assert "worst site=B (n=80)" in row["evidence"]
    row = judge(rule("auroc", "max_subgroup_drop", max_drop=0.05, include_small_groups=True), ev, 0.95)
    assert row["passed"] is False and "site=C" in row["evidence"].split("exceed:")[1]
    row = judge(rule("auroc", "max_subgroup_drop", max_drop=0.05, use="ci"), ev, 0.95)
    assert row["passed"] is False  # B's paired CI allows a 0.09 drop
    assert [j["worse_by"] for j in row["values"]["judged"]] == pytest.approx([0.03, 0.09])


def test_subgroup_drop_with_nothing_judgeable_fails():
    subgroups = {"site": [subgroup_row("A", 40, None, None, est(None))]}
    row = judge(rule("auroc", "max_subgroup_drop", max_drop=0.05), evidence("auroc", est(0.9), est(0.9), est(0.0), subgroups), 0.95)
    assert row["passed"] is False and "auroc undefined in site=A (n=40)" in row["evidence"]


def test_fairness_gap_rules():
    fairness = {"site": {"included": ["A", "B"], "excluded": {},
                         "base": {"equalized_odds_difference": 0.10}, "update": {"equalized_odds_difference": 0.18}},
                "sex": {"included": ["F"], "excluded": {"M": "n=10 < 30"},
                        "base": {"equalized_odds_difference": None}, "update": {"equalized_odds_difference": None}}}
    ev = {"models": {}, "paired_differences": {}, "subgroups": {}, "fairness": fairness}
    assert judge(rule("equalized_odds_difference", "max", value=0.2, group_col="site"), ev, 0.95)["passed"] is True
    assert judge(rule("equalized_odds_difference", "max_worsening", value=0.05, group_col="site"), ev, 0.95)["passed"] is False
    row = judge(rule("equalized_odds_difference", "max", value=0.2), ev, 0.95)  # every column: sex has no gap to judge
    assert row["passed"] is False and "M: n=10 < 30" in row["evidence"]


def test_regression_gate_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = 2 * x[:, 0] - x[:, 1] + 0.3 * rng.normal(size=400)
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y, "arm": np.where(x[:, 2] > 0, "treated", "control")})
    for name, rows in (("old", slice(0, 200)), ("new", slice(200, 300)), ("test", slice(300, 400))):
        frame.iloc[rows].to_csv(tmp_path / f"{name}.csv", index=False)
    common = ["--feature-cols", "a,b,c", "--label-col", "y", "--task", "regression", "--epochs", "5", "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", str(tmp_path / "old.csv"), "--model", "mlp", "--method", "full", "--lr", "1e-2", "--out",
                     str(tmp_path / "base"), *common]) == 0
        assert main(["train", str(tmp_path / "new.csv"), "--model", str(tmp_path / "base" / "model"), "--method", "bitfit",
                     "--out", str(tmp_path / "update"), *common]) == 0
        (tmp_path / "criteria.yaml").write_text("criteria:\n  - {metric: rmse, rule: non_inferior, margin: 0.5}\n"
                                                "  - {metric: r2, rule: min, value: 0.5}\n"
                                                "  - {metric: mae, rule: max_subgroup_drop, max_drop: 0.5}\n")
        capsys.readouterr()
        code = main(["gate", "--base", str(tmp_path / "base"), "--update", str(tmp_path / "update"), "--criteria",
                     str(tmp_path / "criteria.yaml"), "--test", str(tmp_path / "test.csv"), "--group-cols", "arm",
                     "--resamples", "200", "--out", str(tmp_path / "gate")])
    finally:
        torch.set_num_threads(threads)
    record = json.loads((tmp_path / "gate" / "gate.json").read_text())
    evaluation = json.loads((tmp_path / "gate" / "evaluation.json").read_text())
    assert code == (0 if record["passed"] else 1)
    assert set(evaluation["models"]["update"]["metrics"]) == {"mae", "rmse", "r2"}
    assert evaluation["models"]["update"]["threshold"] is None and evaluation["fairness"] == {}
    assert evaluation["models"]["base"]["metrics"]["r2"]["value"] > 0.5  # the base learned the linear signal
    groups = {row["group"]: row for row in evaluation["subgroups"]["arm"]}
    assert set(groups) == {"treated", "control"} and "mean_label" in groups["treated"]
    rmse = evaluation["paired_differences"]["rmse"]
    assert record["rows"][0]["passed"] is (rmse["ci_high"] <= 0.5)
    predictions = pd.read_csv(tmp_path / "gate" / "predictions.csv")
    assert list(predictions.columns) == ["row", "label", "arm", "base_prediction", "update_prediction"]
