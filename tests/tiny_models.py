"""Tiny randomly initialised models, built in code, for testing mechanics fast."""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import (
    BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification, GPT2Config,
    GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification, RobertaConfig, RobertaForSequenceClassification,
    T5Config, T5ForSequenceClassification,
)

from selectune.train.tabular import TabularMLP, TabularMLPConfig


def tiny_bert(num_labels: int = 3, seed: int = 0, vocab_size: int = 100) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def tiny_batch(model, batch: int = 4, length: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, model.config.vocab_size, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # one padded row, as in real batches
    labels = torch.randint(0, model.config.num_labels, (batch,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class PlainNet(nn.Module):
    """Not an HF model: a conv layer, a norm, a hidden Linear and a head named ``head``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.norm = nn.LayerNorm(8)
        self.hidden = nn.Linear(4, 8)
        self.hidden_nobias = nn.Linear(8, 8, bias=False)
        self.head = nn.Linear(8, 2)

    def forward(self, x):  # x: (B, 2, L)
        h = self.conv(x).mean(-1)  # (B, 4)
        return self.head(torch.relu(self.hidden_nobias(self.norm(torch.relu(self.hidden(h))))))


# ---- one tiny model per supported family (hidden 32, 2 blocks, vocab 100), dropout off -------------------
# new_parameters(model) names its freshly initialised task head, as selectune's loader would from HF's
# missing keys. Build with the same seed twice and the base weights are bitwise identical.


# As if loaded from a checkpoint without a classifier: HF would report these as missing keys.
NEW_HEADS = {
    "BertForSequenceClassification": ["classifier.weight", "classifier.bias"],
    "RobertaForSequenceClassification": [f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")],
    "DistilBertForSequenceClassification": [f"{m}.{p}" for m in ("pre_classifier", "classifier") for p in ("weight", "bias")],
    "GPT2ForSequenceClassification": ["score.weight"],
    "LlamaForSequenceClassification": ["score.weight"],
    "T5ForSequenceClassification": [f"classification_head.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")],
    "TabularMLP": [],
    "PlainNet": [],
}


def new_parameters(model) -> list[str]:
    """What selectune's loader would return as new for a model built here: its freshly initialised task head
    (a trained TabularMLP base has none). Pass it on: ``select(model, method, new_parameters=new_parameters(model))``."""
    return list(NEW_HEADS.get(type(model).__name__, []))  # built elsewhere: nothing marked new, as before


def tiny_roberta(num_labels: int = 3, seed: int = 0, vocab_size: int = 100) -> RobertaForSequenceClassification:
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, num_labels=num_labels, pad_token_id=1,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return RobertaForSequenceClassification(config)


def tiny_distilbert(num_labels: int = 3, seed: int = 0, vocab_size: int = 100) -> DistilBertForSequenceClassification:
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=vocab_size, dim=32, hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=64,
                              num_labels=num_labels, pad_token_id=0, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)
    return DistilBertForSequenceClassification(config)


def tiny_gpt2(num_labels: int = 3, seed: int = 0, vocab_size: int = 100) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    # pad_token_id lets the classifier find each row's last real token; bos/eos must sit inside the tiny vocab.
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=num_labels,
                        pad_token_id=0, bos_token_id=2, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2ForSequenceClassification(config)


def tiny_llama(num_labels: int = 3, seed: int = 0, vocab_size: int = 100) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, num_labels=num_labels,
                         pad_token_id=0, bos_token_id=2, eos_token_id=2)
    return LlamaForSequenceClassification(config)


def tiny_t5(num_labels: int = 3, seed: int = 0, vocab_size: int = 100) -> T5ForSequenceClassification:
    torch.manual_seed(seed)
    # Gated MLP (wi_0/wi_1) to cover that naming too; T5 pads with 0 and ends every input with eos 1.
    config = T5Config(vocab_size=vocab_size, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, num_labels=num_labels,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5ForSequenceClassification(config)


def tiny_text_batch(model, batch: int = 4, length: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded token ids with the model's own pad id; T5 inputs end in eos (its classifier reads there).

    Works for every builder above: decoder-only classifiers find the last real token by pad id, and
    T5ForSequenceClassification derives its decoder inputs from ``input_ids``.
    """
    config = model.config
    g = torch.Generator().manual_seed(seed)
    special = {config.pad_token_id, getattr(config, "eos_token_id", None), getattr(config, "bos_token_id", None)}
    low = max(s for s in special if s is not None) + 1  # ordinary tokens only, so pad/eos appear where placed
    ids = torch.randint(low, config.vocab_size, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # one padded row, as in real batches
    if config.model_type == "t5":
        ids[torch.arange(batch), mask.sum(1) - 1] = config.eos_token_id
    ids[mask == 0] = config.pad_token_id
    labels = torch.randint(0, config.num_labels, (batch,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


TINY_TEXT_MODELS = {"bert": tiny_bert, "roberta": tiny_roberta, "distilbert": tiny_distilbert, "gpt2": tiny_gpt2,
                    "llama": tiny_llama, "t5": tiny_t5}
"""Every tiny HF classifier by family; ``tiny_text_batch`` builds a batch for each."""


def tiny_tabular_mlp(seed: int = 0, n_features: int = 5, n_outputs: int = 3) -> TabularMLP:
    """selectune's TabularMLP as a trained base would arrive: nothing new, dropout off."""
    torch.manual_seed(seed)
    return TabularMLP(TabularMLPConfig(n_features=n_features, n_outputs=n_outputs, hidden=[16, 16], dropout=0.0))


def tiny_tabular_batch(net, batch: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"features": torch.randn(batch, net.config.n_features, generator=g),
            "labels": torch.randint(0, net.config.n_outputs, (batch,), generator=g)}


def saved_tabular_delta(base_dir, delta_dir, features=("age", "bmi"), labels=("no", "yes")) -> None:
    """A small MLP saved to ``base_dir`` (statistics around 40) and an untrained BitFit delta of it in ``delta_dir``,
    with task metadata as `selectune train` writes it."""
    from selectune import save_delta, select
    from selectune.tasks import TabularClassification

    torch.manual_seed(0)
    net = TabularMLP(TabularMLPConfig(n_features=len(features), n_outputs=len(labels), hidden=[8], dropout=0.0,
                                      feature_names=list(features), labels=list(labels)))
    net.set_statistics(torch.randn(50, len(features)) + 40)
    net.save_pretrained(base_dir)
    task = TabularClassification(label_col="outcome", labels=list(labels), feature_cols=list(features))
    loaded = task.load_model(str(base_dir))
    selection = select(loaded.model, "bitfit", new_parameters=loaded.new_parameters)
    save_delta(loaded.model, selection, delta_dir, metadata={"task": task.metadata(), "base_model": str(base_dir)})
