"""`selectune tune` / `compare --cv K`: folds, grids, the choice made on training rows only, the refit scored once."""
import json

import numpy as np
import pandas as pd
import pytest

from selectune.cli import main
from selectune.compare.contenders import parse_contenders
from selectune.compare.render import render_comparison
from selectune.compare.tune import Grid, Setting, make_folds, method_grid, parse_grid, tune
from selectune.data import DataError
from tests.conftest import NEGATIVE, POSITIVE


def reviews(n: int, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame([(f"{(POSITIVE if i % 2 == 0 else NEGATIVE)[(i // 2 + offset) % 10]} (review {i})",
                          "pos" if i % 2 == 0 else "neg", f"p{i // 3}") for i in range(n)], columns=["text", "label", "patient"])


# ---- folds and grids -----------------------------------------------------------------------------------------

def test_folds_are_stratified_seeded_and_keep_each_group_in_one_fold():
    frame = pd.DataFrame({"label": ["a"] * 30 + ["b"] * 10, "patient": [f"p{i // 2}" for i in range(40)]})
    folds = make_folds(frame, 5, "label", None, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))  # every row held out exactly once
    assert [int((frame["label"].iloc[f] == "b").sum()) for f in folds] == [2, 2, 2, 2, 2]  # stratified: 10 b over 5 folds
    again = make_folds(frame, 5, "label", None, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))  # the same folds for every method
    other = make_folds(frame, 5, "label", None, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(folds, other))
    grouped = make_folds(frame, 4, "label", "patient", seed=0)
    owners = [set(frame["patient"].iloc[f]) for f in grouped]
    assert sum(len(o) for o in owners) == 20 and len(set().union(*owners)) == 20  # no patient in two folds
    regression = make_folds(pd.DataFrame({"y": np.arange(10.0)}), 5, None, None, seed=0)
    assert sorted(len(f) for f in regression) == [2] * 5
    with pytest.raises(DataError, match="rarest class has 1"):
        make_folds(pd.DataFrame({"label": ["a"] * 9 + ["b"]}), 2, "label", None, seed=0)
    with pytest.raises(DataError, match="fewer than the 4 folds"):
        make_folds(frame.head(12).assign(patient=[f"p{i // 4}" for i in range(12)]), 4, "label", "patient", seed=0)


def test_grid_overrides_every_method_or_one_and_refuses_bad_items():
    assert parse_grid(["lr=1e-3", "3e-3", "epochs=4", "8", "dropout=0", "0.1"]) == {
        "*": {"lr": [1e-3, 3e-3], "epochs": [4, 8], "dropout": [0.0, 0.1]}}
    grid = parse_grid(["epochs=2", "bitfit.lr=1e-2"])
    bitfit, full = parse_contenders("bitfit,full")
    assert method_grid(bitfit, grid) == Grid([1e-2], [2], [0.0, 0.1])
    assert method_grid(full, grid) == Grid([1e-5, 3e-5, 9e-5], [2], [0.0, 0.1])  # default lr 3e-5 x 1/3, 1, 3
    assert method_grid(full, {}).epochs == [3, 5, 8]
    assert Grid([1e-3], [1, 2], [0.0]).settings() == [Setting(1e-3, 1, 0.0), Setting(1e-3, 2, 0.0)]
    with pytest.raises(ValueError, match="give lr, epochs or dropout"):
        parse_grid(["momentum=0.9"])
    with pytest.raises(ValueError, match="has no key"):
        parse_grid(["1e-3"])
    with pytest.raises(ValueError, match="not a whole number"):
        parse_grid(["epochs=2.5"])
    with pytest.raises(ValueError, match="dropout in"):
        parse_grid(["dropout=1.5"])


# ---- the whole command on a tiny BERT ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tune_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune-data")
    reviews(36).to_csv(out / "train.csv", index=False)
    reviews(16, 3).to_csv(out / "test.csv", index=False)
    flipped = reviews(16, 3)
    flipped["label"] = flipped["label"].map({"pos": "neg", "neg": "pos"})  # every test label wrong for a good model
    flipped.to_csv(out / "test-flipped.csv", index=False)
    return out


def run_tune(tiny_bert_dir, data, out, test="test.csv"):
    return tune(str(data / "train.csv"), test=str(data / test), model=tiny_bert_dir, text_col="text", out=str(out),
                methods=["bitfit", "head"], cv=3, grid=["lr=1e-2", "3e-2", "epochs=1", "2", "dropout=0"], seeds=[0],
                batch_size=8, max_length=16, bootstrap=200, progress=False)


def test_tune_chooses_by_cross_validation_and_the_test_file_never_changes_a_choice(tiny_bert_dir, tune_data, tmp_path):
    result = run_tune(tiny_bert_dir, tune_data, tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "tune.json").read_text())
    assert [f["held_out"] for f in saved["folds"]] == [12, 12, 12]
    for row in saved["methods"]:
        assert len(row["grid"]) == 4  # 2 lr x 2 epoch counts x 1 dropout
        best = max(row["grid"], key=lambda g: g["mean"])
        assert (row["lr"], row["epochs"], row["dropout"]) == (best["lr"], best["epochs"], best["dropout"])
        assert row["validation"]["folds"] == best["folds"] and len(best["folds"]) == 3
        assert row["validation"]["mean"] == pytest.approx(np.mean(best["folds"]))
        f1 = row["test"]["macro_f1"]
        assert 0 <= f1["ci_low"] <= f1["mean"] <= f1["ci_high"] <= 1
    refits = saved["runs"]
    assert [(r["method"], r["train_config"]["epochs"]) for r in refits] == [(s["method"], s["epochs"]) for s in saved["methods"]]
    assert all(r["steps"] == 5 * r["epochs"] for r in refits)  # all 36 training rows, batch 8: 5 steps per epoch
    assert saved["recommendation"]["split"] == "3-fold cross-validation of the training rows"
    assert saved["plots"] and all((tmp_path / "a" / p).is_file() for p in saved["plots"])
    assert result["out"] == str(tmp_path / "a")
    with np.load(tmp_path / "a" / "test_outputs.npz") as saved_outputs:
        assert sorted(saved_outputs.files) == ["bitfit|seed0", "head|seed0", "y"]
        assert saved_outputs["head|seed0"].shape == (16, 2) and list(saved_outputs["y"]) == [1, 0] * 8  # neg=0, pos=1
    # Every label of the test file flipped: the test scores change, no choice and no fold score does.
    flipped = run_tune(tiny_bert_dir, tune_data, tmp_path / "b", test="test-flipped.csv")
    for a, b in zip(result["methods"], flipped["methods"]):
        assert a["grid"] == b["grid"] and a["setting"] == b["setting"]
        assert a["test"]["loss"]["mean"] != pytest.approx(b["test"]["loss"]["mean"], abs=1e-6)  # it read the other file
    assert result["recommendation"]["recommended"] == flipped["recommendation"]["recommended"]


def test_compare_cv_runs_tune_from_the_command_line(tiny_bert_dir, tune_data, tmp_path, capsys):
    out = tmp_path / "cv"
    code = main(["compare", str(tune_data / "train.csv"), "--test", str(tune_data / "test.csv"), "--model", tiny_bert_dir,
                 "--text-col", "text", "--methods", "head", "--cv", "2", "--grid", "lr=1e-2", "epochs=1", "dropout=0",
                 "--batch-size", "8", "--max-length", "16", "--bootstrap", "100", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    saved = json.loads((out / "tune.json").read_text())
    assert saved["config"]["cv"] == 2 and saved["methods"][0]["setting"] == "lr 0.01, 1 epochs, dropout 0"
    assert "chosen by 2-fold cross-validation" in printed and "CV folds" in printed
    folds = saved["methods"][0]["validation"]["folds"]
    assert " ".join(f"{v:.3f}" for v in folds) in printed
    code = main(["compare", str(tune_data / "train.csv"), "--test", str(tune_data / "test.csv"), "--model", tiny_bert_dir,
                 "--text-col", "text", "--methods", "head", "--cv", "2", "--lr-sweep", "--out", str(tmp_path / "x")])
    assert code == 2 and "drop --lr-sweep" in capsys.readouterr().err
    code = main(["tune", str(tune_data / "train.csv"), "--test", str(tune_data / "test.csv"), "--model", tiny_bert_dir,
                 "--text-col", "text", "--grid", "epochs=0", "--out", str(tmp_path / "y")])
    assert code == 2 and "epochs must be >= 1" in capsys.readouterr().err
    for flags, fix in ((["--impute", "median"], "without --cv"), (["--mlflow-uri", "http://127.0.0.1:9"], "drop --mlflow-uri")):
        code = main(["compare", str(tune_data / "train.csv"), "--test", str(tune_data / "test.csv"), "--model", tiny_bert_dir,
                     "--text-col", "text", "--methods", "head", "--cv", "2", *flags, "--out", str(tmp_path / "z")])
        assert code == 2 and fix in capsys.readouterr().err and not (tmp_path / "z").exists()


# ---- the recommendation's tolerance on a regression metric ----------------------------------------------------

def test_regression_tolerance_is_relative_so_a_tiny_rmse_difference_picks_nothing():
    from selectune.compare.recommend import recommend, scaled_tolerance

    # The case: RMSE ~52 on sklearn diabetes, LoRA 0.18 below full; an absolute 0.01 picked LoRA on that.
    rows = [{"method": m, "validation": {"mean": v}, "trainable_parameters": p, "median_step_seconds": 1.0, "peak_memory_mb": 1.0}
            for m, v, p in (("full", 52.00, 5000), ("bitfit", 52.10, 130), ("head", 52.30, 65), ("lora", 51.82, 900))]
    assert recommend(rows, "rmse", 0.01)["recommended"] == "lora"  # absolute units: the old behaviour
    tolerance = scaled_tolerance(rows, "rmse", 0.01)
    assert tolerance["absolute"] == pytest.approx(0.5182) and tolerance["relative"]
    assert "1% of the best validation rmse (51.82)" in tolerance["rule"]
    advice = recommend(rows, "rmse", tolerance["absolute"])
    assert advice["recommended"] == "head" and advice["within_tolerance"] == ["full", "bitfit", "head", "lora"]
    # On a 0-1 metric the tolerance stays in points.
    assert scaled_tolerance([{"validation": {"mean": 0.4}}], "macro_f1", 0.01) == {
        "absolute": 0.01, "relative": False, "rule": "1.0 pt (absolute on a 0-1 metric)"}


def test_compare_on_sklearn_diabetes_regression_applies_the_relative_tolerance(tmp_path):
    from sklearn.datasets import load_diabetes

    from selectune.compare.run import compare

    frame = load_diabetes(as_frame=True).frame  # 442 patients, target ~25-346 (RMSE ~55)
    frame.iloc[:350].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[350:].to_csv(tmp_path / "test.csv", index=False)
    features = [c for c in frame.columns if c != "target"]
    result = compare(str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), model="mlp", feature_cols=features,
                     label_col="target", task="regression", out=str(tmp_path / "cmp"), methods="full,bitfit,head", epochs=3,
                     hidden=[16], progress=False, bootstrap=100)
    advice, rows = result["recommendation"], result["methods"]
    best = min(s["validation"]["mean"] for s in rows)
    assert best > 20  # RMSE in the target's units
    assert advice["tolerance"] == pytest.approx(0.01 * best)
    assert advice["within_tolerance"] == [s["method"] for s in rows if s["validation"]["mean"] <= best * 1.01 + 1e-12]
    assert "1% of the best validation rmse" in advice["tolerance_rule"]
    assert f"tolerance: {advice['tolerance_rule']}" in render_comparison(result)


def test_paired_seed_mean_differences_share_resamples_and_match_the_point():
    from selectune.compare.bootstrap import paired_seed_mean_differences, seed_mean_cis
    from selectune.evaluate.metrics import classification_scores

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=200)
    good = [np.eye(3)[np.where(rng.random(200) < 0.8, y, rng.integers(0, 3, 200))] * 0.9 + 0.1 / 3 for _ in range(2)]
    bad = [np.eye(3)[np.where(rng.random(200) < 0.5, y, rng.integers(0, 3, 200))] * 0.9 + 0.1 / 3 for _ in range(2)]
    same = [g.copy() for g in good]
    diffs = paired_seed_mean_differences(y, {"bitfit": good, "lora": bad, "twin": same}, "bitfit", ["macro_f1", "accuracy"],
                                         classification=True, resamples=400, seed=1)
    assert set(diffs) == {"lora", "twin"}
    point = np.mean([classification_scores(y, g, 2, 0.5)["macro_f1"] for g in good]) - \
        np.mean([classification_scores(y, b, 2, 0.5)["macro_f1"] for b in bad])
    lora = diffs["lora"]["macro_f1"]
    assert lora["value"] == pytest.approx(point) and 0 < lora["ci_low"] < lora["value"] < lora["ci_high"]
    # Identical predictions: every paired resample differs by exactly 0 (unpaired CIs would not show that).
    assert diffs["twin"]["accuracy"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "valid_resamples": 400}
    separate = seed_mean_cis(y, good, ["macro_f1"], classification=True, resamples=400, seed=1)["macro_f1"]
    assert lora["ci_high"] - lora["ci_low"] < 2 * (separate[1] - separate[0])


def test_tune_on_regression_picks_the_lowest_mean_rmse_over_plain_folds(tmp_path):
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    frame.iloc[:300].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[300:].to_csv(tmp_path / "test.csv", index=False)
    result = tune(str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), model="mlp", task="regression",
                  feature_cols=[c for c in frame.columns if c != "target"], label_col="target", methods=["full", "bitfit"],
                  cv=3, grid=["lr=1e-3", "1e-2", "epochs=2", "4", "dropout=0"], hidden=[16], bootstrap=100,
                  out=str(tmp_path / "t"), progress=False)
    assert result["metric"] == "rmse" and [f["held_out"] for f in result["folds"]] == [100, 100, 100]
    for row in result["methods"]:
        best = min(row["grid"], key=lambda g: g["mean"])  # lower is better
        assert (row["lr"], row["epochs"]) == (best["lr"], best["epochs"])
        assert row["test"]["rmse"]["ci_low"] < row["test"]["rmse"]["mean"] < row["test"]["rmse"]["ci_high"]
    best_cv = min(s["validation"]["mean"] for s in result["methods"])
    assert result["recommendation"]["tolerance"] == pytest.approx(0.01 * best_cv)


# ---- the refit reproduced by `selectune train --val-fraction 0` ---------------------------------------------------

def test_train_on_every_row_reproduces_the_tune_refit_and_summary_says_so(tiny_bert_dir, tune_data, tmp_path, capsys):
    """The main job's claim in small: `train --val-fraction 0` with tune's chosen setting and seed is tune's refit (with
    dropout on, so the random state must match too), so its test score equals the refit's exactly; `summary
    --reference` checks that against the benchmark row."""
    from selectune.train.run import train

    settings = {"batch_size": 8, "max_length": 16, "progress": False}
    tuned = tune(str(tune_data / "train.csv"), test=str(tune_data / "test.csv"), model=tiny_bert_dir, text_col="text",
                 out=str(tmp_path / "tune"), methods=["bitfit"], cv=2, grid=["lr=1e-2", "epochs=2", "dropout=0.1"], seeds=[0, 1],
                 bootstrap=100, **settings)
    refits = {r["seed"]: r for r in tuned["runs"]}
    trained = train(str(tune_data / "train.csv"), test=str(tune_data / "test.csv"), model=tiny_bert_dir, text_col="text",
                    out=str(tmp_path / "run"), method="bitfit", lr=1e-2, epochs=2, dropout=0.1, val_fraction=0, seed=1, **settings)
    assert trained["test"]["macro_f1"] == refits[1]["test"]["macro_f1"]
    assert trained["test"]["loss"] == pytest.approx(refits[1]["test"]["loss"], abs=1e-6)  # the same weights, to float noise
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["split_protocol"]["sizes"] == {"train": 36, "validation": 0, "test": 16} and saved["split_protocol"]["val_fraction"] == 0
    assert saved["best_validation"] is None and saved["best_epoch"] == 2  # nothing scored: the last epoch is kept
    assert [sorted(h) for h in saved["history"]] == [["epoch", "train_loss"]] * 2
    # a recipe.json-shaped reference holding tune's row: the run is its seed-1 refit
    row = tuned["methods"][0]
    reference = {"recipe": {"cv": 2, "seeds": [0, 1]}, "tasks": {"label": {"methods": {"bitfit": {
        "setting": {"lr": row["lr"], "epochs": row["epochs"], "dropout": row["dropout"]}, "cv": row["validation"],
        "test": row["test"], "test_macro_f1_by_seed": [refits[s]["test"]["macro_f1"] for s in (0, 1)],
        "trainable_parameters": row["trainable_parameters"], "trainable_percent": row["trainable_percent"],
        "train_seconds": row["train_seconds"]}}}}}
    (tmp_path / "recipe.json").write_text(json.dumps(reference))
    assert main(["summary", str(tmp_path / "run"), "--reference", str(tmp_path / "recipe.json")]) == 0
    printed = capsys.readouterr().out
    assert (f"{tmp_path / 'run'} reproduces the reference's bitfit seed-1 run: test macro_f1 "
            f"{refits[1]['test']['macro_f1']:.4f} here, {refits[1]['test']['macro_f1']:.4f} there.") in printed
    f1 = row["test"]["macro_f1"]
    assert f"[{f1['ci_low']:.3f}, {f1['ci_high']:.3f}]" in printed and "recipe.json label: 2-seed mean" in printed
    # the same run against another seed's row is not that row; a run with another setting is named as such
    reference["tasks"]["label"]["methods"]["bitfit"]["test_macro_f1_by_seed"][1] += 0.01
    (tmp_path / "recipe.json").write_text(json.dumps(reference))
    main(["summary", str(tmp_path / "run"), "--reference", str(tmp_path / "recipe.json")])
    assert "does NOT reproduce the reference's bitfit seed-1 run" in capsys.readouterr().out
    assert main(["summary", str(tmp_path / "run"), "--reference", str(tmp_path / "recipe.json"), "--reference-task", "rating"]) == 2
    assert "recipe.json has no task 'rating' (its tasks: label); name one with --reference-task" in capsys.readouterr().err
