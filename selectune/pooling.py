"""Mean pooling inside a plain BERT classifier: one extra encoder layer whose attention averages the token states.

all-MiniLM-L6-v2 was trained to be read by the mean of its token states, but ``BertForSequenceClassification``
classifies the CLS state through the pooler. A head that pools by mean would need its own model class, and a
merged delta would then no longer load with plain ``from_pretrained``. Instead the mean is computed by BERT's own
layer type, appended as layer L (weights set by construction, nothing random):

    query, key:   W = 0, b = 0   -> every score is 0, so softmax is uniform over the unmasked tokens
    value:        W = I, b = 0   -> the CLS row of the attention output is mean_j h_j, (B, T, H) -> (B, H)
    attn_out:     W = c*I, b = 0 -> LayerNorm(c*mean + h_cls) = LayerNorm(mean + h_cls / c): scale-invariant, so
                                   the CLS state's own share is 1/c (c = 100)
    mlp_in/out:   W = 0, b = 0   -> the feed-forward adds nothing; the second LayerNorm of a normalised vector is
                                   itself (up to eps)
    pooler:       W = I, b = 0   -> tanh(LayerNorm(mean)) goes to the new classifier

The attention mask already excludes padding, and [CLS]/[SEP] count as tokens, as in sentence-transformers' mean
pooling. The result is an ordinary BERT folder (``minilm-mean``): every method, delta, merge, serve path and
fingerprint works on it unchanged, and the layer's own biases and LayerNorms train under BitFit like any other.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, BertModel
from transformers.utils import logging as hf_logging

from selectune.io import staged_folder

MEAN_SCALE = 100.0


def mean_pooling_layer_state(hidden: int, intermediate: int, prefix: str, scale: float = MEAN_SCALE) -> dict[str, torch.Tensor]:
    """State dict entries of one BertLayer at ``prefix`` that computes LayerNorm(mean + h_cls / scale) at every row."""
    eye, zeros = torch.eye(hidden), torch.zeros(hidden)
    return {
        f"{prefix}.attention.self.query.weight": torch.zeros(hidden, hidden), f"{prefix}.attention.self.query.bias": zeros.clone(),
        f"{prefix}.attention.self.key.weight": torch.zeros(hidden, hidden), f"{prefix}.attention.self.key.bias": zeros.clone(),
        f"{prefix}.attention.self.value.weight": eye.clone(), f"{prefix}.attention.self.value.bias": zeros.clone(),
        f"{prefix}.attention.output.dense.weight": eye * scale, f"{prefix}.attention.output.dense.bias": zeros.clone(),
        f"{prefix}.attention.output.LayerNorm.weight": torch.ones(hidden), f"{prefix}.attention.output.LayerNorm.bias": zeros.clone(),
        f"{prefix}.intermediate.dense.weight": torch.zeros(intermediate, hidden), f"{prefix}.intermediate.dense.bias": torch.zeros(intermediate),
        f"{prefix}.output.dense.weight": torch.zeros(hidden, intermediate), f"{prefix}.output.dense.bias": zeros.clone(),
        f"{prefix}.output.LayerNorm.weight": torch.ones(hidden), f"{prefix}.output.LayerNorm.bias": zeros.clone(),
    }


def add_mean_pooling_layer(source: str, out: str, scale: float = MEAN_SCALE) -> str:
    """Write ``source`` (a BERT-family HF folder) to ``out`` with a mean-pooling layer appended and an identity pooler.

    Written to a partial folder and renamed into place, so ``out`` is either complete or absent."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # loading and saving a known model: no load report, no progress bars
    hf_logging.disable_progress_bar()
    try:
        return _build(source, out, scale)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _build(source: str, out: str, scale: float) -> str:
    config = AutoConfig.from_pretrained(source)
    if config.model_type != "bert":
        raise ValueError(f"a mean-pooling layer is built for BERT models; {source} is {config.model_type!r}")
    model = BertModel.from_pretrained(source, add_pooling_layer=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hidden, layers = config.hidden_size, config.num_hidden_layers
    state.update(mean_pooling_layer_state(hidden, config.intermediate_size, f"encoder.layer.{layers}", scale))
    state["pooler.dense.weight"], state["pooler.dense.bias"] = torch.eye(hidden), torch.zeros(hidden)
    config.num_hidden_layers = layers + 1
    config.selectune_mean_pooling = {"source": Path(source).name, "layer": layers, "scale": scale}
    pooled = BertModel(config, add_pooling_layer=True)
    pooled.load_state_dict(state, strict=True)
    target = Path(out)
    with staged_folder(target, keep_existing=True) as partial:  # another process built it meanwhile: keep theirs (same bytes)
        pooled.save_pretrained(partial)
        AutoTokenizer.from_pretrained(source).save_pretrained(partial)
    return str(target)


def cache_dir() -> Path:
    """Where derived base models are built once: $SELECTUNE_CACHE, else ~/.cache/selectune."""
    return Path(os.environ.get("SELECTUNE_CACHE") or Path.home() / ".cache" / "selectune")
