"""Metrics, thresholds, calibration, bootstrap CIs and subgroups: real values against scikit-learn,
fairlearn and cases computed by hand."""
import time

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from selectune.evaluate.bootstrap import (ClassificationResampler, RegressionResampler, bootstrap_samples, estimate,
                                          paired_differences, resample_weights)
from selectune.evaluate.metrics import (CLASSIFICATION_METRICS, choose_threshold, classification_scores, curves,
                                        expected_calibration_error, parse_threshold_rule, regression_scores)
from selectune.evaluate.scorecard import EvaluationSettings, score_predictions
from selectune.evaluate.subgroups import fairness_gaps, subgroup_tables


def binary(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.c_[1 - p1, p1]


def noisy_probs(n, n_classes, seed, signal=1.0, decimals=1):
    """Probabilities that carry some signal, rounded so scores tie (as real model outputs can)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = np.round(rng.normal(size=(n, n_classes)) + signal * np.eye(n_classes)[y], decimals)
    probs = np.exp(logits)
    return y, probs / probs.sum(1, keepdims=True)


# ---------------------------------------------------------------- point estimates

def test_binary_metrics_by_hand():
    # sklearn's documented example: AUROC 0.75, average precision 0.8333.
    y = np.array([0, 0, 1, 1])
    probs = binary([0.1, 0.4, 0.35, 0.8])
    s = classification_scores(y, probs, positive=1, threshold=0.5)
    assert s["auroc"] == pytest.approx(0.75)
    assert s["auprc"] == pytest.approx(0.8333333333)
    # flagged at >= 0.5: only row 4 -> TP 1, FN 1, TN 2, FP 0
    assert (s["sensitivity"], s["specificity"], s["ppv"], s["npv"]) == pytest.approx((0.5, 1.0, 1.0, 2 / 3))
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)  # class 0: tp 2 fp 1 fn 0; class 1: tp 1 fp 0 fn 1
    assert s["brier"] == pytest.approx((0.1 ** 2 + 0.4 ** 2 + 0.65 ** 2 + 0.2 ** 2) / 4)
    # bins of width 0.1: {0.1} -> bin 0 (edges go left, as sklearn), {0.4, 0.35} -> bin 3, {0.8} -> bin 7
    assert s["ece"] == pytest.approx((0.1 + abs(1 - 0.75) + 0.2) / 4)


def test_threshold_moves_only_threshold_metrics():
    y = np.array([0, 0, 1, 1])
    probs = binary([0.1, 0.4, 0.35, 0.8])
    low = classification_scores(y, probs, positive=1, threshold=0.3)  # flags rows 2-4
    assert (low["sensitivity"], low["specificity"], low["ppv"]) == pytest.approx((1.0, 0.5, 2 / 3))
    high = classification_scores(y, probs, positive=1, threshold=0.5)
    for m in ("auroc", "auprc", "accuracy", "macro_f1", "brier", "ece"):
        assert low[m] == high[m]


def test_multiclass_metrics_match_sklearn():
    y, probs = noisy_probs(300, 3, seed=1)
    s = classification_scores(y, probs, positive=0, threshold=0.4)
    assert s["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert s["auprc"] == pytest.approx(np.mean([average_precision_score(y == c, probs[:, c]) for c in range(3)]))
    assert s["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    flagged, is_pos = probs[:, 0] >= 0.4, y == 0
    assert s["sensitivity"] == pytest.approx((flagged & is_pos).sum() / is_pos.sum())
    assert s["specificity"] == pytest.approx((~flagged & ~is_pos).sum() / (~is_pos).sum())
    assert s["brier"] == pytest.approx(np.mean(((probs - np.eye(3)[y]) ** 2).sum(1)))
    # top-label ECE: confidence vs correctness, same bins as calibration_curve
    correct, confidence = (probs.argmax(1) == y).astype(float), probs.max(1)
    observed, predicted = calibration_curve(correct, confidence, n_bins=10)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], confidence), minlength=10)
    assert s["ece"] == pytest.approx(np.sum(counts[counts > 0] / len(y) * np.abs(observed - predicted)))


def test_undefined_metrics_are_nan_not_errors():
    y = np.array([0, 0, 0])  # no positive row
    s = classification_scores(y, binary([0.2, 0.6, 0.1]), positive=1, threshold=0.5)
    assert np.isnan(s["auroc"]) and np.isnan(s["auprc"]) and np.isnan(s["sensitivity"]) and np.isnan(s["ppv"]) is np.False_
    assert s["specificity"] == pytest.approx(2 / 3) and s["npv"] == 1.0 and s["ppv"] == 0.0


def test_regression_scores():
    s = regression_scores(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 5.0]))
    assert s["mae"] == pytest.approx(0.625)
    assert s["rmse"] == pytest.approx(np.sqrt(2.25 / 4))
    assert s["r2"] == pytest.approx(1 - 2.25 / 5)


def test_expected_calibration_error_perfect_and_worst():
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([1.0, 0.0])) == 1.0


# ---------------------------------------------------------------- thresholds (validation only)

def test_youden_threshold():
    is_pos = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    score = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    # candidate 0.7: tpr 2/3 fpr 0 (J .667); 0.4: tpr 1 fpr 1/3 (J .667) -> first of the ties, the higher one
    assert choose_threshold(is_pos, score, "youden") == pytest.approx(0.7)
    assert choose_threshold(is_pos, score, "sensitivity=1.0") == pytest.approx(0.4)
    assert choose_threshold(is_pos, score, "sensitivity=0.5") == pytest.approx(0.7)
    assert choose_threshold(is_pos, score, "fixed=0.25") == 0.25


@pytest.mark.parametrize("rule", ["youdn", "sensitivity", "sensitivity=1.5", "fixed=abc", "youden=0.3"])
def test_bad_threshold_rules(rule):
    with pytest.raises(ValueError, match="youden .* sensitivity=0.9 .* fixed=0.5"):
        parse_threshold_rule(rule)


def test_threshold_needs_both_outcomes():
    with pytest.raises(ValueError, match="only positive-class examples.*fixed=0.5"):
        choose_threshold(np.ones(4, dtype=bool), np.linspace(0, 1, 4), "youden")


# ---------------------------------------------------------------- bootstrap

@pytest.mark.parametrize("n_classes", [2, 3])
def test_vectorised_bootstrap_equals_sklearn_on_resampled_rows(n_classes):
    y, probs = noisy_probs(200, n_classes, seed=n_classes)
    resampler = ClassificationResampler(y, probs, positive=1, threshold=0.4)
    weights = next(resample_weights(200, 25, seed=7))
    indices = np.random.default_rng(7).integers(0, 200, size=(25, 200))  # the draws behind those weights
    vectorised = resampler(weights)
    for b in range(25):
        expected = classification_scores(y[indices[b]], probs[indices[b]], positive=1, threshold=0.4)
        for metric in CLASSIFICATION_METRICS:
            assert vectorised[metric][b] == pytest.approx(expected[metric], abs=1e-12), (metric, b)


def test_vectorised_regression_equals_sklearn_on_resampled_rows():
    rng = np.random.default_rng(3)
    y = rng.normal(size=150)
    pred = y + rng.normal(scale=0.5, size=150)
    values = RegressionResampler(y, pred)(next(resample_weights(150, 10, seed=4)))
    indices = np.random.default_rng(4).integers(0, 150, size=(10, 150))
    for b in range(10):
        expected = regression_scores(y[indices[b]], pred[indices[b]])
        for metric in ("mae", "rmse", "r2"):
            assert values[metric][b] == pytest.approx(expected[metric], abs=1e-12)


def test_resample_with_one_class_is_nan_and_dropped_from_the_ci():
    y = np.array([0] * 9 + [1])  # one positive: many resamples miss it
    probs = binary(np.linspace(0.05, 0.95, 10))
    samples = bootstrap_samples({"m": ClassificationResampler(y, probs, 1, 0.5)}, 10, 400, seed=0)["m"]
    missing = np.isnan(samples["auroc"])
    assert 0.2 < missing.mean() < 0.5  # P(no positive drawn) = 0.9^10 = 0.35
    assert estimate(1.0, samples["auroc"])["valid_resamples"] == int((~missing).sum())


def test_bootstrap_repeats_exactly_with_the_same_seed():
    y, probs = noisy_probs(400, 3, seed=5)

    def run(seed, resamples=1000):
        samples = bootstrap_samples({"m": ClassificationResampler(y, probs, 0, 0.5)}, 400, resamples, seed)["m"]
        return {m: estimate(0.0, v) for m, v in samples.items()}, samples

    first, first_samples = run(11)
    again, again_samples = run(11)
    assert first == again
    for m in first_samples:
        assert np.array_equal(first_samples[m], again_samples[m], equal_nan=True)
    other, _ = run(12)
    assert other["auroc"]["ci_low"] != first["auroc"]["ci_low"]
    # A longer run extends the same resample stream: its first 1000 resamples are the ones above.
    _, longer = run(11, resamples=1300)
    assert np.array_equal(longer["auroc"][:1000], first_samples["auroc"])


def test_bootstrap_is_fast():
    y, probs = noisy_probs(400, 3, seed=6)
    resamplers = {"base": ClassificationResampler(y, probs, 0, 0.5), "update": ClassificationResampler(y, probs[:, [1, 2, 0]], 0, 0.5)}
    started = time.perf_counter()
    bootstrap_samples(resamplers, 400, 1000, seed=0)
    assert time.perf_counter() - started < 10  # ~0.6 s here; 20 000 sklearn calls would take ~30 s


def test_ci_covers_the_point_and_narrows_with_more_rows():
    widths = []
    for n in (100, 1600):
        y, probs = noisy_probs(n, 2, seed=8, decimals=3)
        point = classification_scores(y, probs, 1, 0.5)["auroc"]
        samples = bootstrap_samples({"m": ClassificationResampler(y, probs, 1, 0.5)}, n, 500, seed=0)["m"]
        est = estimate(point, samples["auroc"])
        assert est["ci_low"] < point < est["ci_high"]
        widths.append(est["ci_high"] - est["ci_low"])
    assert widths[1] < widths[0] / 2.5  # ~1/sqrt(16) = 1/4


def test_paired_ci_of_identical_models_is_zero():
    y, probs = noisy_probs(120, 2, seed=9)
    resamplers = {"base": ClassificationResampler(y, probs, 1, 0.5), "update": ClassificationResampler(y, probs, 1, 0.5)}
    samples = bootstrap_samples(resamplers, 120, 200, seed=0)
    points = classification_scores(y, probs, 1, 0.5)
    diff = paired_differences(points, points, samples["update"], samples["base"], 0.95)
    assert diff["auroc"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "valid_resamples": 200}


def test_paired_ci_detects_a_consistent_gain_that_unpaired_cis_cannot():
    # The update fixes 10 of 300 rows the base gets wrong and changes nothing else: a real, small gain.
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, 300)
    p_base = np.where(rng.random(300) < 0.75, np.where(y == 1, 0.7, 0.3), np.where(y == 1, 0.3, 0.7))
    wrong = np.flatnonzero((p_base >= 0.5) != (y == 1))[:10]
    p_update = p_base.copy()
    p_update[wrong] = 1 - p_update[wrong]
    resamplers = {"base": ClassificationResampler(y, binary(p_base), 1, 0.5), "update": ClassificationResampler(y, binary(p_update), 1, 0.5)}
    samples = bootstrap_samples(resamplers, 300, 1000, seed=0)
    base = estimate(0, samples["base"]["accuracy"])
    update = estimate(0, samples["update"]["accuracy"])
    assert update["ci_low"] < base["ci_high"]  # separate CIs overlap: no conclusion
    diff = estimate(10 / 300, samples["update"]["accuracy"] - samples["base"]["accuracy"])
    assert diff["ci_low"] > 0  # the paired CI sees the gain
    # every resample holds each fixed row as often in both: the difference is its count / 300
    assert diff["ci_high"] - diff["ci_low"] < (update["ci_high"] - update["ci_low"]) / 2


# ---------------------------------------------------------------- curves, subgroups, fairness

def test_curves_match_sklearn():
    y, probs = noisy_probs(100, 3, seed=12, decimals=2)
    labels = ["a", "b", "c"]
    c = curves(y, probs, positive=0, labels=labels)
    assert set(c["roc"]) == set(labels)  # multi-class: one-vs-rest per class
    fpr, tpr, _ = roc_curve(y == 1, probs[:, 1])
    assert c["roc"]["b"]["fpr"] == pytest.approx(fpr, abs=1e-6) and c["roc"]["b"]["tpr"] == pytest.approx(tpr, abs=1e-6)
    assert sum(c["calibration"]["count"]) == 100 and c["calibration"]["of"].startswith("top-label")
    yb, pb = noisy_probs(100, 2, seed=13)
    assert list(curves(yb, pb, positive=1, labels=["neg", "pos"])["roc"]) == ["pos"]


def group_case():
    rng = np.random.default_rng(140)  # not noisy_probs' seed: sex must not copy the labels
    y, probs = noisy_probs(260, 2, seed=14, decimals=3)
    groups = pd.DataFrame({"site": np.where(np.arange(260) < 240, "big", "tiny"), "sex": rng.choice(["F", "M"], 260)})
    return y, probs, groups


def test_subgroups_flag_small_groups_without_hiding_them():
    y, probs, groups = group_case()
    tables = subgroup_tables(groups, y, {"base": probs, "update": probs ** 2 / (probs ** 2).sum(1, keepdims=True)},
                             {"base": 0.5, "update": 0.5}, positive=1, min_group_n=30, resamples=200, seed=0, confidence=0.95)
    site = {row["group"]: row for row in tables["site"]}
    assert site["tiny"]["n"] == 20 and site["tiny"]["small"] is True and site["tiny"]["ci_reliable"] is False
    assert site["big"]["small"] is False and site["big"]["ci_reliable"] is True
    tiny = y[240:]
    assert site["tiny"]["positives"] == int(tiny.sum()) and site["tiny"]["prevalence"] == pytest.approx(tiny.mean())
    expected = classification_scores(tiny, probs[240:], 1, 0.5)["auroc"]
    assert site["tiny"]["metrics"]["base"]["auroc"]["value"] == pytest.approx(expected)
    assert site["tiny"]["metrics"]["base"]["auroc"]["ci_low"] is not None  # shown, flagged unreliable
    assert set(site["tiny"]["difference"]) == set(CLASSIFICATION_METRICS)


def test_fairness_gaps_are_fairlearns_on_the_included_groups():
    y, probs, groups = group_case()
    gaps = fairness_gaps(groups, y, {"base": probs}, {"base": 0.5}, positive=1, min_group_n=30)
    assert gaps["site"]["excluded"] == {"tiny": "n=20 < 30"}
    assert gaps["site"]["base"]["demographic_parity_difference"] is None  # one group left: no gap
    flagged = probs[:, 1] >= 0.5
    sex = gaps["sex"]["base"]
    assert sex["equalized_odds_difference"] == pytest.approx(equalized_odds_difference(y == 1, flagged, sensitive_features=groups["sex"]))
    assert sex["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y == 1, flagged, sensitive_features=groups["sex"]))
    rates = sex["by_group"]["F"]
    women = groups["sex"].to_numpy() == "F"
    assert rates["n"] == women.sum() and rates["selection_rate"] == pytest.approx(flagged[women].mean())


def test_score_predictions_is_json_ready_and_repeatable():
    import json

    y, probs, groups = group_case()
    settings = EvaluationSettings(resamples=100, seed=3, positive_label="pos", group_cols=["site", "sex"])
    outputs = {"base": probs, "update": probs[:, ::-1]}
    first = score_predictions(y, outputs, {"base": 0.5, "update": 0.5}, ["neg", "pos"], settings, groups)
    text = json.dumps(first, allow_nan=False)  # NaN would break browsers' JSON.parse
    again = score_predictions(y, outputs, {"base": 0.5, "update": 0.5}, ["neg", "pos"], settings, groups)
    assert json.dumps(again, allow_nan=False) == text
    assert first["paired_differences"]["auroc"]["value"] == pytest.approx(
        first["models"]["update"]["metrics"]["auroc"]["value"] - first["models"]["base"]["metrics"]["auroc"]["value"])
    assert first["models"]["base"]["confusion"]["tp"] == int(((probs[:, 1] >= 0.5) & (y == 1)).sum())
