"""Tiny randomly initialised models, built in code, for testing mechanics fast."""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import BertConfig, BertForSequenceClassification

from selectune.selection import NEW_PARAMETERS_ATTR


def tiny_bert(num_labels: int = 3, seed: int = 0, vocab_size: int = 100) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    # As if loaded from a checkpoint without a classifier: HF would report these as missing keys.
    setattr(model, NEW_PARAMETERS_ATTR, ["classifier.weight", "classifier.bias"])
    return model


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
