"""A raw clinical table (missing labs, a text sex column, two sites): preprocessing that belongs to the model.

One flag each (``--impute``, ``--categorical-cols``) trains a base; a BitFit update reuses its preprocessing; the
gate and the server read the same rows the same way: served answers equal ``predict`` on rows with missing values
and unseen categories. Bad input exits 2 naming the column and the fix.
"""
import json
import warnings

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from selectune.cli import main
from selectune.data import run_checks
from selectune.evaluate.run import predict
from selectune.fingerprint import base_fingerprint
from selectune.serve import ServeConfig, create_app
from selectune.serve.in_process import serve_in_thread
from selectune.tasks.tabular_inputs import TabularPreprocessing, UnseenCategoryWarning
from selectune.train.tabular import TabularMLP
from tests.test_cli_errors import fails

FEATURES = "age,crp,hb,sex"
LABS = ["crp", "hb"]


def clinical_table(n: int, site: str, seed: int, crp_missing: float = 0.25) -> pd.DataFrame:
    """Age, two labs (CRP a quarter missing, Hb a tenth), sex as text; outcome rises with age, CRP and male sex."""
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 10, n).round(2)
    crp = rng.lognormal(1, 0.5, n).round(3)
    hb = rng.normal(13, 1.5, n).round(2)
    sex = rng.choice(["F", "M"], n)
    score = (age - 60) / 10 + (crp - 3) / 2 + (sex == "M") * 0.8 + rng.normal(0, 0.5, n)
    frame = pd.DataFrame({"patient": [f"{site}{i}" for i in range(n)], "age": age,
                          "crp": np.where(rng.random(n) < crp_missing, np.nan, crp), "hb": np.where(rng.random(n) < 0.1, np.nan, hb),
                          "sex": sex, "site": site, "outcome": np.where(score > 0.3, "yes", "no")})
    return frame


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    """Base on site A (one flag each), a BitFit update on site B, a gate with sex subgroups: the CLI as a user runs it."""
    folder = tmp_path_factory.mktemp("clinic")
    files = {"a_train": clinical_table(240, "a", 1), "a_val": clinical_table(60, "a", 2), "a_test": clinical_table(80, "a", 3),
             "b_train": clinical_table(160, "b", 4), "b_test": clinical_table(120, "b", 5)}
    for name, frame in files.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    common = ["--feature-cols", FEATURES, "--label-col", "outcome", "--no-progress"]
    assert run("train", folder / "a_train.csv", "--validation", folder / "a_val.csv", "--test", folder / "a_test.csv", "--model", "mlp",
               "--method", "full", "--lr", "3e-3", "--epochs", "8", "--impute", "median", "--categorical-cols", "sex",
               "--missing-indicators", "--out", folder / "base", *common) == 0
    assert run("train", folder / "b_train.csv", "--model", folder / "base" / "model", "--init-delta", folder / "base" / "delta",
               "--method", "bitfit", "--lr", "1e-2", "--epochs", "4", "--out", folder / "update", *common) == 0
    (folder / "criteria.yaml").write_text("criteria:\n  - {metric: auroc, rule: non_inferior, margin: 1.0}\n")
    assert run("gate", "--base", folder / "base", "--update", folder / "update", "--criteria", folder / "criteria.yaml",
               "--test", folder / "b_test.csv", "--group-cols", "sex", "--out", folder / "gate") == 0
    return folder, files


def test_base_fits_its_preprocessing_on_the_training_split_and_records_it_everywhere(clinic):
    folder, files = clinic
    config = json.loads((folder / "base" / "model" / "config.json").read_text())
    prep = config["preprocessing"]
    train = files["a_train"]
    # Fitted on the training file only: the medians of a_train, not of validation or test rows.
    assert prep["fill"]["crp"] == pytest.approx(float(train["crp"].median()))
    assert prep["fill"]["hb"] == pytest.approx(float(train["hb"].median()))
    assert prep["fill"]["sex"] == train["sex"].mode()[0]
    assert prep["categories"] == {"sex": ["F", "M"]} and prep["impute"] == "median"
    assert prep["indicators"] == ["crp", "hb"]  # age had no missing values in training: no indicator
    assert config["n_features"] == 1 + 1 + 1 + 2 + 2  # age, crp, hb, sex=F, sex=M, crp_missing, hb_missing
    # recorded in the delta's task metadata, the run config, and (via its sha256 buffer) the base fingerprint
    delta = json.loads((folder / "base" / "delta" / "delta_config.json").read_text())
    assert delta["metadata"]["task"]["preprocessing"] == prep
    assert json.loads((folder / "base" / "run_config.json").read_text())["preprocessing"] == prep
    update_delta = json.loads((folder / "update" / "delta" / "delta_config.json").read_text())
    assert update_delta["metadata"]["task"]["preprocessing"] == prep  # the update reused it unchanged
    # the data checks counted missing values per column and split
    missing = {r["check"]: r for r in json.loads((folder / "base" / "checks.json").read_text())["results"]}["missingness"]
    assert missing["details"]["missing"]["train"]["crp"] == int(train["crp"].isna().sum())
    assert missing["details"]["missing"]["test"]["hb"] == int(files["a_test"]["hb"].isna().sum())


def test_preprocessing_is_part_of_the_base_fingerprint_and_an_edited_config_is_refused(clinic, tmp_path):
    folder, _ = clinic
    base = TabularMLP.from_pretrained(folder / "base" / "model")
    config = json.loads((folder / "base" / "model" / "config.json").read_text())
    config["preprocessing"]["fill"]["crp"] = 99.0
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "config.json").write_text(json.dumps(config))
    (edited / "model.safetensors").write_bytes((folder / "base" / "model" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="preprocessing differs"):
        TabularMLP.from_pretrained(edited)
    other = TabularMLP(type(base.config)(**config))
    other.load_state_dict({k: v for k, v in base.state_dict().items() if k != "preprocessing_sha256"}, strict=False)
    assert base_fingerprint(other) != base_fingerprint(base)
    assert fails_cleanly(["predict", folder / "a_test.csv", "--delta", folder / "base" / "delta", "--model", edited,
                          "--out", tmp_path / "p.csv"], "preprocessing differs")


def fails_cleanly(argv, *expected) -> bool:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run(*argv)
    assert code == 2 and all(e in err.getvalue() for e in expected), err.getvalue()
    return True


def test_update_gate_and_report_ran_with_sex_subgroups(clinic):
    folder, _ = clinic
    gate = json.loads((folder / "gate" / "gate.json").read_text())
    evaluation = json.loads((folder / "gate" / "evaluation.json").read_text())
    assert gate["passed"] is True
    assert evaluation["data"]["test"]["rows"] == 120
    groups = json.dumps(evaluation["subgroups"])
    assert '"F"' in groups and '"M"' in groups
    predictions = pd.read_csv(folder / "gate" / "predictions.csv")
    assert len(predictions) == 120


def test_served_answers_equal_predict_on_missing_values_and_unseen_categories(clinic, tmp_path):
    folder, files = clinic
    rows = files["b_test"].head(8).copy()
    rows.loc[0, ["crp", "hb"]] = np.nan  # both labs missing
    rows.loc[1, "sex"] = "X"  # a category never seen in training
    rows.loc[2, "sex"] = np.nan  # a missing category: imputed with the most frequent level
    rows.to_csv(tmp_path / "rows.csv", index=False)
    deltas = tmp_path / "deltas"
    deltas.mkdir()
    (deltas / "site-b").symlink_to(folder / "update" / "delta")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        offline = pd.read_csv(predict(str(tmp_path / "rows.csv"), delta=str(folder / "update"), out=str(tmp_path / "offline.csv")))
    assert any(issubclass(w.category, UnseenCategoryWarning) and "'X'" in str(w.message) for w in caught)
    inputs = [{c: (None if pd.isna(r[c]) else r[c]) for c in FEATURES.split(",")} for r in rows.to_dict("records")]
    app = create_app(ServeConfig(base=str(folder / "base" / "model"), deltas=str(deltas)))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/v1/predict", json={"model": "site-b", "inputs": inputs})
        assert answer.status_code == 200, answer.text
        for i, prediction in enumerate(answer.json()["predictions"]):
            assert prediction["label"] == offline.loc[i, "prediction"]
            for label in ("no", "yes"):
                assert abs(prediction["probabilities"][label] - offline.loc[i, f"prob_{label}"]) <= 1e-5
        # the unseen category really is "unknown": neither F nor M
        x_row = TabularPreprocessing.from_json(json.loads((folder / "base" / "model" / "config.json").read_text())["preprocessing"])
        with pytest.warns(UnseenCategoryWarning):
            encoded = x_row.transform(rows.iloc[[1]])
        assert encoded[0, 3:5].tolist() == [0.0, 0.0]
        for bad, phrase in [([{**inputs[3], "crp": "high"}], "features must be finite numbers (or null"),
                            ([{**inputs[3], "sex": True}], "inputs[0].sex"),
                            ([{k: v for k, v in inputs[3].items() if k != "crp"}], "missing feature(s) ['crp']")]:
            refused = client.post("/v1/predict", json={"model": "site-b", "inputs": bad})
            assert refused.status_code == 422 and phrase in refused.json()["detail"], refused.text


def test_models_without_preprocessing_keep_refusing_missing_values_and_name_the_flag(tmp_path, capsys):
    frame = clinical_table(80, "a", 1)
    frame.to_csv(tmp_path / "t.csv", index=False)
    argv = ["train", tmp_path / "t.csv", "--model", "mlp", "--method", "full", "--epochs", "1", "--no-progress", "--label-col",
            "outcome", "--out", tmp_path / "run"]
    fails(capsys, argv + ["--feature-cols", "age,crp,hb", "--categorical-cols", "sex"], tmp_path / "run", "--categorical-cols",
          "'sex'", "--feature-cols")
    fails(capsys, argv + ["--feature-cols", "age,crp,hb"], tmp_path / "run", "'crp'", "missing value", "--impute median")
    fails(capsys, argv + ["--feature-cols", "age,hb,sex", "--impute", "median"], tmp_path / "run", "'sex'", "not numeric",
          "--categorical-cols sex")
    fails(capsys, argv + ["--feature-cols", "age,crp", "--missing-indicators"], tmp_path / "run", "--missing-indicators", "--impute")
    fails(capsys, argv + ["--feature-cols", "age,crp", "--impute", "middle"], tmp_path / "run", "--impute", "median, mean or most_frequent")


def test_a_column_entirely_missing_or_with_thousands_of_levels_is_refused_naming_it(tmp_path, capsys):
    frame = clinical_table(120, "a", 1)
    frame["ldl"] = np.nan
    frame["mrn"] = [f"MRN{i:05d}" for i in range(len(frame))]
    frame.to_csv(tmp_path / "t.csv", index=False)
    argv = ["train", tmp_path / "t.csv", "--model", "mlp", "--method", "full", "--epochs", "1", "--no-progress", "--label-col",
            "outcome", "--impute", "median", "--out", tmp_path / "run"]
    fails(capsys, argv + ["--feature-cols", "age,crp,ldl"], tmp_path / "run", "'ldl'", "no values in the training",
          "Drop it from --feature-cols")
    many = pd.concat([frame] * 20, ignore_index=True)
    many["mrn"] = [f"MRN{i:05d}" for i in range(len(many))]
    many["age"] = np.arange(len(many))  # no duplicate rows
    many.to_csv(tmp_path / "many.csv", index=False)
    argv[1] = tmp_path / "many.csv"
    fails(capsys, argv + ["--feature-cols", "age,crp,mrn", "--categorical-cols", "mrn"], tmp_path / "run", "'mrn'",
          "distinct values", "Group rare values")


def test_an_update_reuses_its_base_preprocessing_and_refuses_what_the_base_cannot_take(clinic, tmp_path, capsys):
    folder, files = clinic
    train = folder / "b_train.csv"
    base = ["train", train, "--model", folder / "base" / "model", "--method", "bitfit", "--epochs", "1", "--no-progress",
            "--label-col", "outcome", "--out", tmp_path / "run"]
    fails(capsys, base + ["--feature-cols", "age,crp,hb,sex,site"], tmp_path / "run", "base never saw ['site']",
          "same columns")
    fails(capsys, base + ["--feature-cols", FEATURES, "--impute", "mean"], tmp_path / "run", "impute median",
          "reuses its base's preprocessing", "drop --impute")
    # the same flags as the base are accepted (and change nothing)
    assert run(*base, "--feature-cols", FEATURES, "--impute", "median", "--categorical-cols", "sex") == 0
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["preprocessing"] == \
        json.loads((folder / "base" / "model" / "config.json").read_text())["preprocessing"]


def test_checks_report_missingness_per_column_and_split_and_flag_a_shift():
    train = clinical_table(300, "a", 1, crp_missing=0.05)
    test = clinical_table(300, "b", 2, crp_missing=0.5)
    report = run_checks({"train": train, "test": test}, feature_cols=["age", "crp", "hb"], label_col="outcome")
    result = {r.check: r for r in report.results}["missingness"]
    assert result.status == "warn"
    assert result.details["missing"]["train"]["crp"] == int(train["crp"].isna().sum())
    assert result.details["missing"]["test"]["crp"] == int(test["crp"].isna().sum())
    assert [s["column"] for s in result.details["shifts"]] == ["crp"]
    assert "crp" in result.message and "missing in train" in result.message
    same = run_checks({"train": train, "test": clinical_table(300, "b", 2, crp_missing=0.05)}, feature_cols=["age", "crp", "hb"],
                      label_col="outcome")
    assert {r.check: r for r in same.results}["missingness"].status == "pass"


def test_evaluate_and_a_merged_model_read_missing_values_as_predict_does(clinic, tmp_path):
    from selectune.evaluate.run import evaluate
    from selectune.models import merge

    folder, files = clinic
    test = str(folder / "b_test.csv")
    scored = evaluate(test, delta=str(folder / "update"))["metrics"]
    assert scored["n"] == 120 and scored["auroc"] > 0.7
    merged = merge(str(folder / "update"), str(tmp_path / "merged"))
    from_delta = pd.read_csv(predict(test, delta=str(folder / "update"), out=str(tmp_path / "a.csv")))
    from_merged = pd.read_csv(predict(test, model=merged, out=str(tmp_path / "b.csv")))
    assert files["b_test"]["crp"].isna().sum() > 10
    assert np.allclose(from_delta["prob_yes"], from_merged["prob_yes"], atol=1e-6)


def test_check_counts_missing_values_with_the_flags_train_takes(clinic, tmp_path):
    from selectune.data.check_command import check

    folder, files = clinic
    result = check(str(folder / "a_train.csv"), test=str(folder / "a_test.csv"), feature_cols=FEATURES, label_col="outcome",
                   impute="median", categorical_cols="sex")
    missing = {r["check"]: r for r in result["results"]}["missingness"]
    assert missing["details"]["missing"]["test"]["crp"] == int(files["a_test"]["crp"].isna().sum())
    assert "crp" in missing["message"]
