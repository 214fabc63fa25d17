"""Shared fixtures: a tiny text model and small text data, built once per test session (fast, offline)."""

import pandas as pd
import pytest

POSITIVE = ["great relief from pain", "worked well for me", "no side effects at all", "felt much better quickly",
            "sleep improved a lot", "would recommend it", "helped my migraines", "easy to take and effective",
            "symptoms gone in a week", "best medication so far"]
NEGATIVE = ["terrible headaches after", "did not help at all", "made me dizzy and sick", "stopped it after two days",
            "awful nausea every morning", "no improvement whatsoever", "rash all over my arms", "worse than before",
            "could not sleep on it", "side effects were unbearable"]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A randomly initialised 2-layer BERT (hidden 32) with the bundled MiniLM tokenizer: loads like any HF folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from selectune.models import resolve_model

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-cls"))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_text_csvs(tmp_path_factory):
    """(train.csv, test.csv) paths with columns `text` and `label` (pos/neg): 40 and 20 short fake reviews."""
    out = tmp_path_factory.mktemp("tiny-text")

    def frame(n, offset):
        rows = [(f"{(POSITIVE if i % 2 == 0 else NEGATIVE)[(i // 2 + offset) % 10]} (review {i})", "pos" if i % 2 == 0 else "neg")
                for i in range(n)]
        return pd.DataFrame(rows, columns=["text", "label"])

    train, test = out / "train.csv", out / "test.csv"
    frame(40, 0).to_csv(train, index=False)
    frame(20, 3).to_csv(test, index=False)
    return str(train), str(test)


@pytest.fixture(scope="session")
def gated_tabular_runs(tmp_path_factory):
    """A base and an update run on breast-cancer data with a `site` column, and the gate that judged them.

    Base: a new MLP trained (full) on 250 patients; update: BitFit of that model on 150 others; the gate
    compares both on the remaining 169 with --group-cols site (one site below --min-group-n). Returns the
    folders as a dict: base, update, gate, test, criteria.
    """
    import numpy as np

    from selectune.data import export_bundled
    from selectune.evaluate.gate import gate
    from selectune.train.run import train

    out = tmp_path_factory.mktemp("gated-tabular")
    export_bundled("breast-cancer", str(out / "bc"))
    data = pd.read_csv(out / "bc" / "data.csv")
    data["site"] = np.array(["north", "south", "east"])[data["row_id"] % 3]
    data.loc[data["row_id"] % 17 == 0, "site"] = "tiny"
    data = data.sample(frac=1, random_state=0)
    paths = {name: str(out / f"{name}.csv") for name in ("old", "new", "test")}
    data.iloc[:250].to_csv(paths["old"], index=False)
    data.iloc[250:400].to_csv(paths["new"], index=False)
    data.iloc[400:].to_csv(paths["test"], index=False)
    criteria = out / "criteria.yaml"
    criteria.write_text("description: breast-cancer update, agreed before evaluation\ncriteria:\n"
                        "  - {id: auroc-non-inferior, metric: auroc, rule: non_inferior, margin: 0.02}\n"
                        "  - {metric: auroc, rule: max_subgroup_drop, max_drop: 0.05}\n"
                        "  - {metric: ece, rule: max, value: 0.15}\n"
                        "  - {metric: sensitivity, rule: min, value: 0.8}\n")
    features = "mean_radius,mean_texture,mean_perimeter,mean_area,mean_smoothness"
    common = dict(feature_cols=features, label_col="label", epochs=5, progress=False)
    train(paths["old"], model="mlp", method="full", lr=1e-3, out=str(out / "base"), **common)
    train(paths["new"], model=str(out / "base" / "model"), method="bitfit", out=str(out / "update"), **common)
    gate(base=str(out / "base"), update=str(out / "update"), criteria=str(criteria), test=paths["test"], out=str(out / "gate"),
         group_cols="site", min_group_n=20, resamples=200)
    return {"base": str(out / "base"), "update": str(out / "update"), "gate": str(out / "gate"), "test": paths["test"],
            "criteria": str(criteria)}
