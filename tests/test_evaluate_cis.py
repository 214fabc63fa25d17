"""`selectune evaluate` by itself: bootstrap CIs of every metric and subgroup tables, as the gate computes them."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, mean_squared_error

from selectune.cli import main
from selectune.evaluate.run import evaluate
from selectune.train.run import train
from tests.conftest import NEGATIVE, POSITIVE


@pytest.fixture(scope="module")
def text_run(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-cis")
    rows = [(f"{(POSITIVE if i % 2 == 0 else NEGATIVE)[i // 2 % 10]} (review {i})", "pos" if i % 2 == 0 else "neg",
             "north" if i % 3 else "south") for i in range(60)]
    frame = pd.DataFrame(rows, columns=["text", "label", "site"])
    frame.iloc[:40].to_csv(out / "train.csv", index=False)
    frame.iloc[40:].to_csv(out / "test.csv", index=False)
    train(str(out / "train.csv"), model=tiny_bert_dir, text_col="text", method="full", out=str(out / "run"), epochs=2,
          batch_size=8, max_length=16, progress=False, lr=1e-3)
    return out


def test_evaluate_gives_cis_and_subgroups_without_a_gate(text_run, tmp_path):
    test = str(text_run / "test.csv")
    result = evaluate(test, delta=str(text_run / "run"), group_cols=["site"], resamples=300, seed=3)
    cis, metrics = result["confidence_intervals"], result["metrics"]
    for name in ("macro_f1", "accuracy", "auroc"):
        assert cis[name]["value"] == pytest.approx(metrics[name])
        assert cis[name]["ci_low"] <= cis[name]["value"] <= cis[name]["ci_high"]
    assert cis["macro_f1"]["ci_low"] < cis["macro_f1"]["ci_high"]  # 20 rows: a real interval
    # The subgroup rows are the model's predictions restricted to each site.
    predictions = tmp_path / "p.csv"
    assert main(["predict", test, "--delta", str(text_run / "run"), "--out", str(predictions)]) == 0
    frame = pd.read_csv(predictions)
    table = {row["group"]: row for row in result["subgroups"]["site"]}
    assert set(table) == {"north", "south"}
    for site, row in table.items():
        rows = frame[frame["site"] == site]
        assert row["n"] == len(rows) and row["small"]  # below the default --min-group-n 30
        expected = f1_score(rows["label"], rows["prediction"], average="macro", labels=["neg", "pos"], zero_division=0)
        assert row["metrics"]["macro_f1"]["value"] == pytest.approx(expected)
    assert result["evaluation_settings"]["resamples"] == 300 and result["evaluation_settings"]["positive_label"] == "pos"
    # Same seed, same CIs; another seed, other resamples.
    again = evaluate(test, delta=str(text_run / "run"), group_cols=["site"], resamples=300, seed=3)
    assert again["confidence_intervals"] == cis
    other = evaluate(test, delta=str(text_run / "run"), resamples=300, seed=4)
    assert other["confidence_intervals"]["brier"] != cis["brier"] and other["subgroups"] == {}


def test_evaluate_flags_on_the_command_line_and_bad_input(text_run, tmp_path, capsys):
    test, run = str(text_run / "test.csv"), str(text_run / "run")
    assert main(["evaluate", test, "--delta", run, "--group-cols", "site", "--resamples", "200", "--out", str(tmp_path / "e.json")]) == 0
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["confidence_intervals"]["macro_f1"]["valid_resamples"] == 200 and len(saved["subgroups"]["site"]) == 2
    capsys.readouterr()
    assert main(["evaluate", test, "--delta", run, "--group-cols", "clinic"]) == 2
    assert "--group-cols ['clinic'] not found" in capsys.readouterr().err
    assert main(["evaluate", test, "--delta", run, "--positive-label", "maybe"]) == 2
    assert "--positive-label 'maybe' is not one of" in capsys.readouterr().err
    assert main(["evaluate", test, "--delta", run, "--resamples", "5"]) == 2
    assert "--resamples must be at least 10" in capsys.readouterr().err


def test_evaluate_gives_an_rmse_ci_on_regression(tmp_path):
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    frame.iloc[:350].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[350:].to_csv(tmp_path / "test.csv", index=False)
    features = ",".join(c for c in frame.columns if c != "target")
    train(str(tmp_path / "train.csv"), model="mlp", feature_cols=features, label_col="target", task="regression",
          method="full", out=str(tmp_path / "run"), epochs=3, progress=False)
    result = evaluate(str(tmp_path / "test.csv"), delta=str(tmp_path / "run"), resamples=200)
    main(["predict", str(tmp_path / "test.csv"), "--delta", str(tmp_path / "run"), "--out", str(tmp_path / "p.csv")])
    predicted = pd.read_csv(tmp_path / "p.csv")
    rmse = result["confidence_intervals"]["rmse"]
    assert rmse["value"] == pytest.approx(np.sqrt(mean_squared_error(predicted["target"], predicted["prediction"])), rel=1e-4)
    assert rmse["ci_low"] < rmse["value"] < rmse["ci_high"] and rmse["value"] > 20
    assert result["evaluation_settings"]["threshold"] is None
