"""A small MLP for tabular data that selectune provides, so a team can train its own base model on
historical data (method ``full``) and later update it with ``bitfit`` on new data.

It saves and loads like an HF model (``config.json`` + ``model.safetensors``), through safetensors only.
Feature standardisation lives in buffers, so the statistics of the base's training data travel with the
base and are covered by its fingerprint; an update never re-standardises. Input preprocessing (imputation,
one-hot categories: ``selectune.tasks.tabular_inputs``) is JSON in ``config.json``; its sha256 is a buffer, so
the fingerprint covers it too and an edited config.json is refused on load.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

MODEL_TYPE = "selectune-tabular-mlp"


@dataclass
class TabularMLPConfig:
    n_features: int
    n_outputs: int
    """Number of classes, or 1 for regression."""
    task: str = "classification"
    """"classification" or "regression"."""
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    dropout: float = 0.1
    feature_names: list[str] = field(default_factory=list)
    labels: list[str] | None = None
    model_type: str = MODEL_TYPE
    preprocessing: dict | None = None
    """Fitted input preprocessing (``TabularPreprocessing.to_json()``), or None: the features are read as numbers."""


@dataclass
class TabularOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class TabularMLP(nn.Module):
    def __init__(self, config: TabularMLPConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.n_features
        for size in config.hidden:
            layers += [nn.Linear(width, size), nn.LayerNorm(size), nn.ReLU(), nn.Dropout(config.dropout)]
            width = size
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.n_outputs)
        # (F,) standardisation of inputs; (1,) of the regression target. Set from the base's training data.
        self.register_buffer("feature_mean", torch.zeros(config.n_features))
        self.register_buffer("feature_std", torch.ones(config.n_features))
        self.register_buffer("target_mean", torch.zeros(1))
        self.register_buffer("target_std", torch.ones(1))
        if config.preprocessing is not None:
            # (32,) sha256 of the preprocessing JSON: a buffer, so base_fingerprint covers how inputs are prepared.
            self.register_buffer("preprocessing_sha256", preprocessing_digest(config.preprocessing))

    def set_statistics(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """Standardise with the statistics of ``features`` (N, F) and, for regression, ``targets`` (N,)."""
        with torch.no_grad():
            self.feature_mean.copy_(features.mean(0))
            self.feature_std.copy_(features.std(0).clamp_min(1e-6))
            if targets is not None and self.config.task == "regression":
                self.target_mean.copy_(targets.float().mean().reshape(1))
                self.target_std.copy_(targets.float().std().clamp_min(1e-6).reshape(1))

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> TabularOutput:
        # features: (B, F) -> hidden (B, H) -> logits (B, C), or (B, 1) in standardised target units.
        hidden = self.layers((features - self.feature_mean) / self.feature_std)
        logits = self.head(hidden)
        loss = None
        if labels is not None:
            if self.config.task == "regression":
                target = (labels.float().reshape(-1, 1) - self.target_mean) / self.target_std
                loss = F.mse_loss(logits, target)
            else:
                loss = F.cross_entropy(logits, labels)
        return TabularOutput(logits=logits, loss=loss)

    def predict_values(self, logits: torch.Tensor) -> torch.Tensor:
        """Regression: standardised output (B, 1) -> original units (B,)."""
        return (logits * self.target_std + self.target_mean).reshape(-1)

    # Mirror pair with from_pretrained; same file names as HF so tools recognise the folder.
    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike) -> "TabularMLP":
        model_dir = Path(model_dir)
        config = TabularMLPConfig(**json.loads((model_dir / "config.json").read_text()))
        model = cls(config)
        expected = getattr(model, "preprocessing_sha256", None)
        expected = None if expected is None else expected.clone()  # load_state_dict copies into the buffer in place
        model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
        if expected is not None and not torch.equal(expected, model.preprocessing_sha256):
            raise ValueError(f"{model_dir}/config.json: its preprocessing differs from the one this model was trained with "
                             "(sha256 mismatch); restore the folder as `selectune train` wrote it.")
        return model


def preprocessing_digest(preprocessing: dict) -> torch.Tensor:
    """(32,) uint8 sha256 of the canonical JSON of ``preprocessing``."""
    digest = hashlib.sha256(json.dumps(preprocessing, sort_keys=True, separators=(",", ":")).encode()).digest()
    return torch.tensor(list(digest), dtype=torch.uint8)

