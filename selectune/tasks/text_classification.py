"""Text classification: a Hugging Face sequence classifier reads one text column; outputs are class probabilities."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
import torch.nn as nn

from selectune.tasks.base import (EXAMPLE_REVIEWS, Example, LoadedModel, Task, is_causal_lm_dir, quiet_transformers, read_model_type,
                                  write_example_splits)
from selectune.tasks.errors import InputLimits, ModelLoadError, check_text
from selectune.tasks.outputs import ClassOutputs


@dataclass
class TextClassification(ClassOutputs, Task):
    name: ClassVar[str] = "text-classification"
    hf_task_type: ClassVar[str] = "text-classification"
    label_col: str = "label"
    labels: list[str] | None = None
    """Class names (sorted)."""
    text_col: str | None = None
    max_length: int = 128
    tokenizer: Any = field(default=None, repr=False, compare=False)
    """Set by ``load_model``; encode/collate need it."""

    # ---- columns and data ---------------------------------------------------------------------
    @property
    def input_columns(self) -> list[str]:
        return [self.text_col] if self.text_col else []

    def data_options(self) -> dict[str, Any]:
        return {"text_col": self.text_col, "feature_cols": None, "task": self.metric_family}

    def encode(self, frame: pd.DataFrame, with_labels: bool = True) -> dict[str, Any]:
        """Unpadded token lists per row, padded per batch by ``collate``."""
        enc = self.tokenizer(frame[self.text_col].astype(str).tolist(), truncation=True, max_length=self.max_length)
        out: dict[str, Any] = {k: list(v) for k, v in enc.items()}
        if with_labels and self.label_col in frame:
            out["labels"] = torch.tensor(self.label_ids(frame))
        return out

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        # Pad to the longest row of this batch, not to max_length: most reviews are shorter.
        batch = self.collate_request([{k: v for k, v in r.items() if k != "labels"} for r in rows], self.tokenizer)
        if "labels" in rows[0]:
            batch["labels"] = torch.stack([torch.as_tensor(r["labels"]) for r in rows])
        return batch

    # ---- model --------------------------------------------------------------------------------
    def load_model(self, model: str, train_frame: pd.DataFrame | None = None, *, hidden: list[int] | None = None,
                   with_tokenizer: bool = True) -> LoadedModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not Path(model).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelLoadError(f"model {model} is not a local directory and HF_HUB_OFFLINE=1; give a local HF model folder.")
        label2id = {label: i for i, label in enumerate(self.labels)}
        try:
            with quiet_transformers():
                if with_tokenizer:
                    self.tokenizer = AutoTokenizer.from_pretrained(model)
                net, info = AutoModelForSequenceClassification.from_pretrained(
                    model, num_labels=len(self.labels), id2label=dict(enumerate(self.labels)), label2id=label2id,
                    ignore_mismatched_sizes=True, output_loading_info=True)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load a text model from {model}: {str(err).splitlines()[0]} "
                                 "Give a local Hugging Face model folder (config.json + weights + tokenizer).") from None
        mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys", [])]
        names = {n for n, _ in net.named_parameters()}
        # HF's missing keys: parameters the checkpoint lacked (the new classifier) were initialised at random.
        new = sorted(n for n in set(info.get("missing_keys", [])) | set(mismatched) if n in names)
        return LoadedModel(net, new, self.tokenizer)

    def save_model(self, model: nn.Module, out_dir: str | os.PathLike) -> None:
        model.save_pretrained(out_dir)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)

    @classmethod
    def claims_model_dir(cls, path: str | os.PathLike) -> bool:
        """A local HF folder of a family with a sequence classifier, or a Hub id (not a local folder): loading says
        what is wrong with it (offline, not found). A decoder saved with its LM head (LlamaForCausalLM) is causal-lm's."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

        if not Path(path).is_dir():
            return True
        return read_model_type(path) in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES and not is_causal_lm_dir(path)

    @classmethod
    def load_base(cls, path: str, n_outputs: int = 2, with_tokenizer: bool = True) -> LoadedModel:
        loaded = cls(label_col="label", labels=[str(i) for i in range(n_outputs)]).load_model(path, with_tokenizer=with_tokenizer)
        loaded.model.eval()
        return loaded

    # ---- serving ------------------------------------------------------------------------------
    def encode_request(self, inputs: list[Any], limits: InputLimits, processor: Any) -> list[dict[str, Any]]:
        """Strings, tokenised here and truncated at the delta's ``max_length`` as in training."""
        for i, text in enumerate(inputs):
            check_text(text, f"inputs[{i}]", limits)
        encoded = processor(list(inputs), truncation=True, max_length=self.max_length)
        return [{k: v[i] for k, v in encoded.items()} for i in range(len(inputs))]

    @classmethod
    def collate_request(cls, examples: list[dict[str, Any]], processor: Any) -> dict[str, torch.Tensor]:
        return dict(processor.pad(examples, return_tensors="pt"))

    def limited_to(self, model: nn.Module, processor: Any) -> "TextClassification":
        # A max_length past the position embeddings would index past them and fail every batch it joins.
        limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None),
                  getattr(processor, "model_max_length", None)]
        limit = min((n for n in limits if isinstance(n, int) and 0 < n < 1_000_000), default=None)
        return self if limit is None or self.max_length <= limit else dataclasses.replace(self, max_length=limit)

    def describe(self) -> dict[str, Any]:
        return {"features": None, "max_length": self.max_length}

    # ---- metadata and options -----------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        # The format every delta since 0.1 carries (feature_cols empty for text).
        return {"kind": self.name, "label_col": self.label_col, "labels": self.labels, "text_col": self.text_col,
                "feature_cols": [], "max_length": self.max_length}

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> "TextClassification":
        return cls(label_col=data["label_col"], labels=data["labels"], text_col=data["text_col"], max_length=data.get("max_length", 128))

    def options(self) -> dict[str, Any]:
        return {"text_col": self.text_col, "feature_cols": [], "task": self.metric_family, "max_length": self.max_length}

    @classmethod
    def from_options(cls, *, label_col: str, text_col: str | None, feature_cols: list[str], task: str,
                     max_length: int) -> "TextClassification | None":
        if not text_col or task != "classification":
            return None
        return cls(label_col=label_col, text_col=text_col, max_length=max_length)

    @classmethod
    def write_example(cls, folder: Path, seed: int = 0) -> Example:
        """A 2-layer BERT (hidden 32, random) with the bundled MiniLM tokenizer, and short fake reviews."""
        from transformers import AutoTokenizer, BertConfig, BertModel

        from selectune.models import resolve_model

        torch.manual_seed(seed)
        tok = AutoTokenizer.from_pretrained(resolve_model("minilm-cls"))
        config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128)
        BertModel(config).save_pretrained(folder / "base")
        tok.save_pretrained(folder / "base")
        good, bad = EXAMPLE_REVIEWS

        def frame(n: int, offset: int) -> pd.DataFrame:
            rows = [(f"{(good if i % 2 == 0 else bad)[(i // 2 + offset) % 4]} (review {i + offset})", "pos" if i % 2 == 0 else "neg")
                    for i in range(n)]
            return pd.DataFrame(rows, columns=["review", "rating"])

        paths = write_example_splits(folder, frame)
        test = pd.read_csv(paths["test"])
        return Example(train=paths["train"], validation=paths["validation"], test=paths["test"],
                       train_options={"model": str(folder / "base"), "text_col": "review", "label_col": "rating", "max_length": 32},
                       request_inputs=test["review"].tolist()[:5],
                       criteria="criteria:\n  - {metric: auroc, rule: non_inferior, margin: 1.0}\n")
