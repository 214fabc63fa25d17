"""`selectune compare`: PEFT baselines through the same loop, summaries over seeds, the recommendation, bad input."""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import f1_score

from selectune.cli import main
from selectune.compare.bootstrap import seed_mean_cis
from selectune.compare.contenders import parse_contenders, prepare
from selectune.compare.cost import PeakMemory
from selectune.compare.peft_baselines import original_name
from selectune.compare.recommend import recommend
from selectune.compare.render import render_comparison
from selectune.compare.run import _subset, compare
from selectune.compare.summary import choose_lr
from tests.conftest import NEGATIVE, POSITIVE
from tests.tiny_models import new_parameters, tiny_batch, tiny_bert


@pytest.fixture(scope="module")
def site_csvs(tmp_path_factory):
    """Short fake reviews with a `site` column for subgroups: 48 train, 24 test rows."""
    out = tmp_path_factory.mktemp("compare-data")

    def frame(n, offset):
        return pd.DataFrame([(f"{(POSITIVE if i % 2 == 0 else NEGATIVE)[(i // 2 + offset) % 10]} (review {i})",
                              "pos" if i % 2 == 0 else "neg", "north" if i % 3 else "south") for i in range(n)],
                            columns=["text", "label", "site"])

    frame(48, 0).to_csv(out / "train.csv", index=False)
    frame(24, 3).to_csv(out / "test.csv", index=False)
    return str(out / "train.csv"), str(out / "test.csv")


# ---- the whole command on a tiny BERT ---------------------------------------------------------------------------

def test_compare_runs_selective_and_peft_methods_alike(tiny_bert_dir, site_csvs, tmp_path):
    train, test = site_csvs
    out = tmp_path / "cmp"
    result = compare(train, test=test, model=tiny_bert_dir, text_col="text", out=str(out), methods="full,bitfit,lora",
                     seeds="0,1", epochs=1, batch_size=8, max_length=16, group_cols="site", min_group_n=3, bootstrap=200,
                     progress=False)
    saved = json.loads((out / "compare.json").read_text())
    assert [s["method"] for s in saved["methods"]] == ["full", "bitfit", "lora"]
    assert len(saved["runs"]) == 6
    for run in saved["runs"]:
        # Same data, splits, epochs and batch for every method; the full config of every run is embedded.
        assert run["train_config"]["epochs"] == 1 and run["train_config"]["batch_size"] == 8
        assert run["train_config"]["seed"] == run["seed"] and run["train_config"]["lr"] == run["lr"]
        assert run["steps"] == 5  # 40 training rows (48 less 8 for validation) / batch 8, 1 epoch
        assert run["median_step_seconds"] > 0 and run["delta_bytes"] > 0 and run["wall_seconds"] >= run["train_seconds"]
        assert run["validation"]["n"] == 8 and run["test"]["n"] == 24
    lora_runs = [r for r in saved["runs"] if r["method"] == "lora"]
    assert lora_runs[0]["delta_file"] == "adapter_model.safetensors"
    assert set(lora_runs[0]["peft_config"]["modules_to_save"]) >= {"bert.pooler.dense", "classifier"}
    by_method = {s["method"]: s for s in saved["methods"]}
    for name, summary in by_method.items():
        runs = [r for r in saved["runs"] if r["method"] == name]
        vals = [r["best_validation"] for r in runs]
        assert summary["seeds"] == [0, 1]
        assert summary["validation"]["mean"] == pytest.approx(np.mean(vals))
        assert summary["validation"]["sd"] == pytest.approx(np.std(vals, ddof=1))
        f1 = summary["test"]["macro_f1"]
        assert f1["mean"] == pytest.approx(np.mean([r["test"]["macro_f1"] for r in runs]))
        assert 0 <= f1["ci_low"] <= f1["ci_high"] <= 1
    assert by_method["full"]["trainable_percent"] == pytest.approx(100.0)
    assert by_method["bitfit"]["trainable_parameters"] < by_method["lora"]["trainable_parameters"] < by_method["full"]["trainable_parameters"]
    # The recommendation: the fewest trainable parameters among methods within tolerance of the best, on validation.
    advice = saved["recommendation"]
    best = max(saved["methods"], key=lambda s: s["validation"]["mean"])["validation"]["mean"]
    within = [s for s in saved["methods"] if s["validation"]["mean"] >= best - 0.01 - 1e-12]
    assert advice["within_tolerance"] == [s["method"] for s in within]
    assert advice["recommended"] == min(within, key=lambda s: s["trainable_parameters"])["method"]
    assert set(saved["subgroups"]["validation"]["bitfit"]["site"]) == {"north", "south"}
    for name in saved["plots"]:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    text = render_comparison(result)
    assert "Recommendation" in text and advice["recommended"] in text and "lora" in text
    assert not list(tmp_path.glob(".cmp.partial-*"))


# ---- PEFT baselines: the real peft package, head trained, base frozen ---------------------------------------------

@pytest.mark.parametrize("name", ["lora", "ia3", "beft"])
def test_peft_baselines_train_adapter_and_head_only_and_round_trip(name, tmp_path):
    from peft import PeftModel

    model = tiny_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    [contender] = parse_contenders(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare(model, contender, new_parameters=new_parameters(model))
    # peft's read of transformers' deprecated property is not the user's business (it spammed every tune run)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    wrapped = prepared.model
    assert isinstance(wrapped, PeftModel)
    assert prepared.trainable_parameters == wrapped.get_nb_trainable_parameters()[0]
    assert prepared.total_parameters == sum(p.numel() for p in before.values())
    # The new classifier keeps its own learning rate: the loop finds it under its wrapped name.
    assert sorted(map(original_name, prepared.new_parameters)) == ["classifier.bias", "classifier.weight"]
    assert all(n in dict(wrapped.named_parameters()) for n in prepared.new_parameters)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    batch = tiny_batch(model)
    for _ in range(3):
        wrapped(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {original_name(n) for n, p in wrapped.named_parameters() if p.requires_grad
               and original_name(n) in before and not torch.equal(p, before[original_name(n)])}
    assert {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"} <= changed
    adapter = [n for n, p in wrapped.named_parameters() if p.requires_grad and original_name(n) not in before]
    assert adapter and all(f"{name}_" in n or "lora_" in n for n in adapter)
    frozen = {n: p for n, p in wrapped.named_parameters() if not p.requires_grad}
    assert frozen and all(torch.equal(p, before[original_name(n).replace(".base_layer", "").replace(".original_module", "")])
                          for n, p in frozen.items())
    # The adapter file holds the adapter and the trained head; PEFT loads it back onto a fresh base exactly.
    weights = prepared.save(tmp_path / name)
    keys = load_file(str(weights))
    assert any("pooler" in k for k in keys) and any("classifier" in k for k in keys)
    wrapped.eval()
    reloaded = PeftModel.from_pretrained(tiny_bert(), str(tmp_path / name)).eval()
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        assert torch.allclose(reloaded(**inputs).logits, wrapped(**inputs).logits, atol=1e-6)


def test_lora_on_the_tabular_mlp_targets_its_hidden_layers():
    from selectune.train.tabular import TabularMLP, TabularMLPConfig

    model = TabularMLP(TabularMLPConfig(n_features=4, n_outputs=2, hidden=[8, 8]))
    prepared = prepare(model, parse_contenders("lora:r=2")[0])
    assert set(prepared.peft_config["target_modules"]) == {"layers.0", "layers.4"}
    assert prepared.peft_config["modules_to_save"] == ["head"]
    out = prepared.model(features=torch.randn(3, 4))
    assert out.logits.shape == (3, 2)


def test_method_strings_parse_with_options_after_their_method():
    contenders = parse_contenders("full,bitfit:roles=query+mlp_in,include_key_bias=true,lora:r=4,alpha=8,ia3,beft")
    assert [c.text for c in contenders] == ["full", "bitfit:roles=query+mlp_in,include_key_bias=true", "lora:r=4,alpha=8", "ia3", "beft"]
    assert [c.kind for c in contenders] == ["selective", "selective", "peft", "peft", "peft"]
    assert contenders[1].options["include_key_bias"] is True and contenders[2].options["r"] == 4
    assert [c.text for c in parse_contenders("bitfit:roles=query+mlp_in;lora")] == ["bitfit:roles=query+mlp_in", "lora"]
    with pytest.raises(ValueError, match="unknown method 'qlora'.*PEFT baselines: lora, ia3, beft"):
        parse_contenders("bitfit,qlora")
    with pytest.raises(ValueError, match="has no option"):
        parse_contenders("lora:rank=4")
    with pytest.raises(ValueError, match="listed twice"):
        parse_contenders("bitfit,bitfit")


# ---- the recommendation ------------------------------------------------------------------------------------------

def row(method, val, params, step=1.0, memory=100.0):
    return {"method": method, "validation": {"mean": val}, "trainable_parameters": params, "median_step_seconds": step,
            "peak_memory_mb": memory}


def test_recommendation_is_the_cheapest_within_tolerance_of_the_best_on_validation():
    rows = [row("full", 0.50, 1000, 3.0, 900), row("lora", 0.47, 100, 2.0, 600), row("bitfit", 0.492, 30, 2.2, 500),
            row("head", 0.40, 10, 1.0, 100)]
    advice = recommend(rows, "macro_f1", 0.01)
    assert advice["best"] == "full" and advice["recommended"] == "bitfit"
    assert advice["within_tolerance"] == ["full", "bitfit"]  # head is cheaper but 10 points behind
    assert "bitfit is within 0.8 pt of the best, full" in advice["reasoning"]
    assert "0.030× of its trainable parameters" not in advice["reasoning"] and "1/33 of its trainable parameters" in advice["reasoning"]
    assert "0.73× its median step time" in advice["reasoning"]
    assert recommend(rows, "macro_f1", 0.05, prefer="time")["recommended"] == "lora"
    assert recommend(rows, "macro_f1", 0.0)["recommended"] == "full"
    assert "no method within 0.0 pt of it has fewer trainable parameters" in recommend(rows, "macro_f1", 0.0)["reasoning"]
    # Lower is better for RMSE: "within tolerance" means at most that much above the best.
    errors = [row("full", 10.0, 1000), row("bitfit", 10.4, 30), row("head", 11.0, 10)]
    assert recommend(errors, "rmse", 0.5)["recommended"] == "bitfit"
    assert recommend(errors, "rmse", 1.0)["recommended"] == "head"


def test_recommendation_warns_when_the_cheapest_trails_on_a_named_subgroup():
    rows = [row("full", 0.50, 1000), row("bitfit", 0.495, 30)]
    subgroups = {"full": {"sex": {"F": {"n": 40, "score": 0.60}, "M": {"n": 45, "score": 0.40}, "X": {"n": 3, "score": 0.9}}},
                 "bitfit": {"sex": {"F": {"n": 40, "score": 0.52}, "M": {"n": 45, "score": 0.47}, "X": {"n": 3, "score": 0.1}}}}
    advice = recommend(rows, "macro_f1", 0.01, subgroups=subgroups, min_group_n=10)
    assert advice["recommended"] == "bitfit"
    assert len(advice["warnings"]) == 1
    assert "subgroup sex=F (n=40), bitfit trails full by 8.0 pt" in advice["warnings"][0]
    assert "sex=X (n=3)" in advice["notes"][0]  # too small to judge, listed
    subgroups["bitfit"]["sex"]["F"]["score"] = 0.595
    assert recommend(rows, "macro_f1", 0.01, subgroups=subgroups, min_group_n=10)["warnings"] == []
    with pytest.raises(ValueError, match="--prefer"):
        recommend(rows, "macro_f1", 0.01, prefer="cost")


def test_learning_rate_is_chosen_on_validation_never_on_test():
    runs = [{"lr": 1e-3, "seed": s, "best_validation": v, "test": {"macro_f1": 0.9}} for s, v in ((0, 0.50), (1, 0.40))]
    runs += [{"lr": 3e-3, "seed": s, "best_validation": v, "test": {"macro_f1": 0.1}} for s, v in ((0, 0.46), (1, 0.46))]
    assert choose_lr(runs, "macro_f1") == 3e-3  # mean 0.46 beats 0.45, whatever test says
    assert choose_lr(runs, "rmse") == 1e-3  # lower is better: mean 0.45 beats 0.46
    tied = [{"lr": lr, "seed": 0, "best_validation": 1.0, "validation": {"loss": loss}} for lr, loss in ((1e-3, 0.30), (3e-3, 0.10))]
    assert choose_lr(tied, "macro_f1") == 3e-3  # a saturated validation metric: the lower validation loss decides


# ---- measurement pieces ------------------------------------------------------------------------------------------

def test_seed_mean_ci_scores_every_seed_on_the_same_resamples():
    from selectune.evaluate.bootstrap import ClassificationResampler, bootstrap_samples, estimate

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    probs = [rng.dirichlet(np.ones(3), 300) for _ in range(2)]
    for p in probs:
        p[np.arange(150), y[:150]] += 2  # better than chance on half the rows
        p /= p.sum(1, keepdims=True)
    cis = seed_mean_cis(y, probs, ["macro_f1", "accuracy", "loss"], classification=True, resamples=500, seed=1)
    assert set(cis) == {"macro_f1", "accuracy"}  # loss is not a resampled metric
    assert cis == seed_mean_cis(y, probs, ["macro_f1", "accuracy"], classification=True, resamples=500, seed=1)  # seeded
    # The interval is that of the mean over seeds, each seed scored on the very same resampled rows.
    samples = bootstrap_samples({str(i): ClassificationResampler(y, p, 2, 0.5) for i, p in enumerate(probs)}, 300, 500, 1)
    mean = (samples["0"]["macro_f1"] + samples["1"]["macro_f1"]) / 2
    expected = estimate(0.0, mean)
    assert cis["macro_f1"] == (expected["ci_low"], expected["ci_high"])
    point = np.mean([f1_score(y, p.argmax(1), average="macro") for p in probs])
    assert cis["macro_f1"][0] < point < cis["macro_f1"][1] and cis["macro_f1"][1] - cis["macro_f1"][0] < 0.15
    errors = seed_mean_cis(rng.normal(size=50), [rng.normal(size=50)], ["rmse"], classification=False, resamples=200)
    assert 0 < errors["rmse"][0] < errors["rmse"][1]


def test_peak_memory_sees_an_allocation_inside_the_block():
    with PeakMemory("cpu") as peak:
        block = torch.ones(50_000_000)  # 200 MB, touched
        del block
    assert peak.bytes_beyond_start > 150 * 2**20
    assert "VmHWM" in peak.how


def test_train_limit_takes_a_stratified_subset():
    frame = pd.DataFrame({"text": [f"r{i}" for i in range(100)], "label": ["a"] * 80 + ["b"] * 20})
    subset = _subset(frame, 20, "label", seed=0)
    assert len(subset) == 20 and subset["label"].value_counts().to_dict() == {"a": 16, "b": 4}
    with pytest.raises(ValueError, match="not below the 100 training rows"):
        _subset(frame, 100, "label", seed=0)


# ---- bad input: exit code 2, a message with the fix, nothing written ----------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--methods", "bitfit,qlora"], "unknown method 'qlora'"),
    (["--group-cols", "ward"], "--group-cols names 'ward', which the validation data lacks"),
    (["--train-limit", "500"], "--train-limit 500 is not below"),
    (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
    (["--prefer", "cheap"], "--prefer must be one of parameters, time, memory"),
])
def test_bad_input_stops_before_training_and_writes_nothing(extra, message, site_csvs, tiny_bert_dir, tmp_path, capsys):
    train, test = site_csvs
    out = tmp_path / "cmp"
    code = main(["compare", train, "--test", test, "--model", tiny_bert_dir, "--text-col", "text", "--out", str(out), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_compare_needs_a_test_split_and_a_fresh_out(site_csvs, tiny_bert_dir, tmp_path, capsys):
    train, _ = site_csvs
    assert main(["compare", train, "--model", tiny_bert_dir, "--text-col", "text", "--out", str(tmp_path / "x")]) == 2
    assert "give --test FILE or --test-fraction" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["compare", train, "--test-fraction", "0.2", "--model", tiny_bert_dir, "--text-col", "text", "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_point_names_never_overlap_even_when_scores_tie():
    """Methods with near-equal scores and sizes (head, beft, ia3 on the drug reviews) used to print on top of each other."""
    import matplotlib.pyplot as plt

    from selectune.compare.plots import _label_points

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [("head", 1.49e5, 0.346), ("beft", 1.51e5, 0.348), ("ia3", 1.65e5, 0.356), ("bitfit:head_weights=true", 1.72e5, 0.353),
              ("bitfit", 2.5e4, 0.368), ("full", 2.3e7, 0.394)]
    ax.set_xscale("log")
    ax.plot([p[1] for p in points], [p[2] for p in points], "o")
    _label_points(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    assert sorted(boxes) == sorted(p[0] for p in points)  # every point named once
    names = sorted(boxes)
    overlapping = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if boxes[a].overlaps(boxes[b])]
    assert overlapping == []
    plt.close(fig)


# ---- tabular preprocessing: one fit, every method reads the same inputs -----------------------------------------

def test_compare_prepares_a_clinical_table_once_for_every_method_peft_included(tmp_path):
    from tests.test_clinical import FEATURES, clinical_table

    train, validation, test = clinical_table(160, "a", 11), clinical_table(40, "a", 12), clinical_table(60, "a", 13)
    for name, frame in (("train", train), ("validation", validation), ("test", test)):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    files = [str(tmp_path / "train.csv"), "--validation", str(tmp_path / "validation.csv"), "--test", str(tmp_path / "test.csv")]
    common = [*files, "--feature-cols", FEATURES, "--label-col", "outcome", "--epochs", "2", "--batch-size", "16", "--no-progress"]
    flags = ["--impute", "median", "--missing-indicators", "--categorical-cols", "sex"]
    compared = ["compare", *common, "--bootstrap", "100", "--keep-deltas"]
    # Without the flags the missing labs stop the comparison before any training, naming the flag.
    assert main([*compared, "--model", "mlp", "--methods", "full,bitfit", "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()

    # a new base: the preprocessing is fitted once, on the training file only, and recorded once
    assert main([*compared, "--model", "mlp", "--methods", "full,bitfit", *flags, "--out", str(tmp_path / "new")]) == 0
    saved = json.loads((tmp_path / "new" / "compare.json").read_text())
    prep = saved["config"]["preprocessing"]
    assert prep["fill"]["crp"] == pytest.approx(float(train["crp"].median()))
    assert prep["categories"] == {"sex": ["F", "M"]} and prep["indicators"] == ["crp", "hb"]
    configs = [json.loads(p.read_text()) for p in sorted((tmp_path / "new" / "runs").glob("*/delta_config.json"))]
    assert [c["selection"]["method"] for c in configs] == ["bitfit", "full"]
    assert len({c["selection"]["base_fingerprint"] for c in configs}) == 1  # one base, its preprocessing (sha256 buffer) included

    # PEFT wraps a saved base (on a new MLP every layer is new, so LoRA would have nothing to adapt): the base brings
    # its preprocessing, the same flags are accepted, and LoRA reads the same 7 prepared inputs as BitFit
    assert main(["train", *common, "--model", "mlp", "--method", "full", *flags, "--out", str(tmp_path / "base")]) == 0
    assert main([*compared, "--model", str(tmp_path / "base" / "model"), "--methods", "bitfit,lora:r=2", *flags,
                 "--out", str(tmp_path / "saved")]) == 0
    saved = json.loads((tmp_path / "saved" / "compare.json").read_text())
    base_prep = json.loads((tmp_path / "base" / "model" / "config.json").read_text())["preprocessing"]
    assert saved["config"]["preprocessing"] == base_prep
    width = 7  # age, crp, hb, sex=F, sex=M, crp_missing, hb_missing
    for run in saved["runs"]:
        assert run["test"]["n"] == 60 and 0.0 <= run["test"]["macro_f1"] <= 1.0
    lora = load_file(str(next((tmp_path / "saved" / "runs").glob("lora-r-2-*/adapter_model.safetensors"))))
    first = next(t for name, t in lora.items() if "layers.0.lora_A" in name)
    assert first.shape == (2, width)  # (r, features)
    # a different flag than the base's is refused: the base's preprocessing is not refitted per method
    assert main([*compared, "--model", str(tmp_path / "base" / "model"), "--methods", "bitfit", "--impute", "mean",
                 "--out", str(tmp_path / "other")]) == 2
