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
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
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
