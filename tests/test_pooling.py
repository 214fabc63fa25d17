"""Mean pooling as a BERT layer (selectune/pooling.py): it computes the masked mean, and it stays a plain BERT model
that trains, merges and loads with plain `from_pretrained`."""
import json

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from selectune.cli import main
from selectune.models import resolve_model
from selectune.pooling import MEAN_SCALE, add_mean_pooling_layer


@pytest.fixture(scope="module")
def pooled_dir(tiny_bert_dir, tmp_path_factory):
    return add_mean_pooling_layer(tiny_bert_dir, str(tmp_path_factory.mktemp("pooled") / "tiny-mean"))


def test_the_appended_layer_is_the_masked_mean_of_the_source_states(tiny_bert_dir, pooled_dir):
    tok = AutoTokenizer.from_pretrained(pooled_dir)
    enc = tok(["worked well for me and no side effects", "awful"], padding=True, return_tensors="pt")  # row 2 is padded
    source, pooled = AutoModel.from_pretrained(tiny_bert_dir).eval(), AutoModel.from_pretrained(pooled_dir).eval()
    assert pooled.config.num_hidden_layers == source.config.num_hidden_layers + 1
    with torch.no_grad():
        h = source(**enc).last_hidden_state  # (B, T, H)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        mean = (h * mask).sum(1) / mask.sum(1)  # (B, H): padding excluded
        expected = torch.nn.functional.layer_norm(mean + h[:, 0] / MEAN_SCALE, (h.shape[-1],), eps=source.config.layer_norm_eps)
        out = pooled(**enc)
    assert torch.allclose(out.last_hidden_state[:, 0], expected, atol=1e-5)
    assert torch.allclose(out.pooler_output, torch.tanh(expected), atol=1e-5)
    unpadded = pooled(**tok(["awful"], return_tensors="pt")).pooler_output  # padding does not change the pooled vector
    assert torch.allclose(unpadded[0], out.pooler_output[1], atol=1e-5)


def test_pooled_model_trains_with_bitfit_and_merges_to_a_plain_classifier(pooled_dir, tiny_text_csvs, tmp_path):
    clf, info = AutoModelForSequenceClassification.from_pretrained(pooled_dir, num_labels=2, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"} and not info["unexpected_keys"]
    train, test = tiny_text_csvs
    assert main(["train", train, "--test", test, "--model", pooled_dir, "--text-col", "text", "--label-col", "label", "--epochs", "1",
                 "--batch-size", "8", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    roles = json.loads((tmp_path / "run" / "metrics.json").read_text())["roles"]
    assert roles  # the role table found BERT's q/k/v/... in the extra layer too
    assert main(["merge", str(tmp_path / "run" / "delta"), str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForSequenceClassification.from_pretrained(pooled_dir, num_labels=2).state_dict()
    # the classifier is new (random in every fresh load): compare the base's own tensors
    changed = {n for n, p in merged.state_dict().items() if not n.startswith("classifier.") and not torch.equal(p, base[n])}
    assert "bert.encoder.layer.2.attention.output.LayerNorm.bias" in changed  # the pooling layer's biases trained
    assert all(n.endswith(".bias") for n in changed)  # BitFit: only biases of the base changed
    assert main(["evaluate", test, "--model", str(tmp_path / "merged"), "--out", str(tmp_path / "merged.json")]) == 0
    assert main(["evaluate", test, "--delta", str(tmp_path / "run" / "delta"), "--out", str(tmp_path / "delta.json")]) == 0
    a = json.loads((tmp_path / "merged.json").read_text())["metrics"]
    b = json.loads((tmp_path / "delta.json").read_text())["metrics"]
    assert a == b


def test_minilm_mean_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELECTUNE_CACHE", str(tmp_path))
    path = resolve_model("minilm-mean")
    config = json.loads((tmp_path / "all-MiniLM-L6-v2-mean-pooling" / "config.json").read_text())
    assert path == str(tmp_path / "all-MiniLM-L6-v2-mean-pooling") and config["num_hidden_layers"] == 7
    assert config["selectune_mean_pooling"]["layer"] == 6
    weights = next((tmp_path / "all-MiniLM-L6-v2-mean-pooling").glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert resolve_model("minilm-mean") == path and weights.stat().st_mtime_ns == stamp  # not rebuilt
    assert not list(tmp_path.glob(".*partial*"))


def test_only_bert_gets_a_mean_pooling_layer(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="built for BERT models"):
        add_mean_pooling_layer(str(tmp_path / "gpt2"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_minilm_names_the_mean_reading_and_a_cls_delta_is_refused_on_it_with_the_other_name(tmp_path, capsys):
    """`minilm` is the mean-pooled reading since 0.2; a delta trained on the CLS reading (what `minilm` named before)
    still loads from the base it recorded, and on `--model minilm` the fingerprint check names `minilm-cls`."""
    from selectune.delta import DeltaFingerprintMismatch, save_delta
    from selectune import select
    from selectune.models import load_with_delta
    from selectune.tasks import TextClassification

    assert resolve_model("minilm") == resolve_model("minilm-mean") != resolve_model("minilm-cls")
    task = TextClassification(text_col="review", label_col="rating", labels=["negative", "neutral", "positive"])
    cls_path = resolve_model("minilm-cls")
    loaded = task.load_model(cls_path)
    selection = select(loaded.model, "bitfit", new_parameters=loaded.new_parameters)
    with torch.no_grad():
        loaded.model.classifier.bias.add_(1.0)  # something trained
    delta = tmp_path / "cls-delta"
    save_delta(loaded.model, selection, delta, metadata={"task": task.metadata(), "base_model": cls_path})
    model, _, _ = load_with_delta(str(delta))  # the recorded base: the package's folder, the CLS reading
    assert model.bert.config.num_hidden_layers == 6
    with pytest.raises(DeltaFingerprintMismatch, match="try --model minilm-cls"):
        load_with_delta(str(delta), model="minilm")
    texts = tmp_path / "t.csv"
    texts.write_text("review\nworked well\n")
    assert main(["predict", str(texts), "--delta", str(delta), "--model", "minilm", "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "minilm-cls" in err and "Traceback" not in err and not (tmp_path / "p.csv").exists()
    assert main(["predict", str(texts), "--delta", str(delta), "--model", "minilm-cls", "--out", str(tmp_path / "p.csv")]) == 0
