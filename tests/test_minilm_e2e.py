"""End to end on the real all-MiniLM-L6-v2 and real drug reviews (a small slice, to stay fast)."""
import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from selectune.cli import main
from selectune.data import export_bundled
from selectune.delta import read_delta
from selectune.models import load_with_delta


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm")
    files = export_bundled("drug-reviews", str(out / "data"))
    train = pd.read_csv(files["train"]).iloc[:160]
    test = pd.read_csv(files["test"]).iloc[:48]
    train.to_csv(out / "train.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    code = main(["train", str(out / "train.csv"), "--test", str(out / "test.csv"), "--model", "minilm", "--text-col", "review",
                 "--label-col", "rating", "--method", "bitfit", "--epochs", "1", "--max-length", "64", "--out", str(out / "run"),
                 "--no-progress"])
    assert code == 0
    return out


def test_bitfit_run_writes_delta_metrics_and_config(run):
    metrics = json.loads((run / "run" / "metrics.json").read_text())
    assert metrics["method"] == "bitfit" and metrics["test"]["n"] == 48
    assert metrics["trainable_parameters"] == 28_803  # 24,963 of MiniLM + 3,840 of the appended mean-pooling layer
    assert metrics["majority_baseline"]["n"] == 48
    tensors, config = read_delta(run / "run" / "delta")
    assert {"classifier.weight", "classifier.bias", "bert.pooler.dense.bias"} <= set(tensors)
    assert config["metadata"]["task"]["labels"] == ["negative", "neutral", "positive"]
    assert (run / "run" / "delta" / "delta.safetensors").stat().st_size < 150_000
    resolved = json.loads((run / "run" / "run_config.json").read_text())
    assert resolved["train_config"]["lr"] == 1e-3 and resolved["method"] == "bitfit"
    assert resolved["data_files"]["train"]["sha256"].startswith("sha256:")


def test_merge_reproduces_delta_outputs_with_plain_from_pretrained(run):
    assert main(["merge", str(run / "run" / "delta"), str(run / "merged")]) == 0
    model, task, _ = load_with_delta(str(run / "run" / "delta"))
    tok = AutoTokenizer.from_pretrained(run / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(run / "merged").eval()
    assert plain.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    texts = pd.read_csv(run / "test.csv")["review"].tolist()[:8]
    batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**batch).logits
        got = plain(**batch).logits
    assert (got - expected).abs().max() <= 1e-5


def test_predict_and_evaluate_agree(run):
    assert main(["predict", str(run / "test.csv"), "--delta", str(run / "run" / "delta"), "--out", str(run / "pred.csv")]) == 0
    assert main(["evaluate", str(run / "test.csv"), "--delta", str(run / "run" / "delta"), "--out", str(run / "eval.json")]) == 0
    pred = pd.read_csv(run / "pred.csv")
    accuracy = json.loads((run / "eval.json").read_text())["metrics"]["accuracy"]
    assert (pred["prediction"] == pred["rating"]).mean() == pytest.approx(accuracy)
    train_metrics = json.loads((run / "run" / "metrics.json").read_text())
    assert accuracy == pytest.approx(train_metrics["test"]["accuracy"])


def test_inspect_and_methods_cli(capsys):
    assert main(["inspect", "minilm", "--method", "bitfit:roles=query+mlp_in", "--num-labels", "3"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    # `minilm` is read by mean pooling: MiniLM's 6 layers + the appended pooling layer, x 384 / 1536 biases
    assert rows["query"][1:3] == ["7", "2688"] and rows["mlp_in"][1:3] == ["7", "10752"]
    assert rows["value"][2] == "0" and rows["all"][2] == str(2688 + 10752 + 1155)  # + the new 3-way classifier
    assert main(["inspect", "minilm-cls", "--method", "bitfit:roles=query+mlp_in", "--num-labels", "3"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.split()}
    assert rows["query"][1:3] == ["6", "2304"] and rows["mlp_in"][1:3] == ["6", "9216"]  # the CLS reading: MiniLM as shipped
    assert "classifier.weight" in out  # new parameters always train
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "bitfit" in out and "include_key_bias" in out and "full" in out and "head" in out
