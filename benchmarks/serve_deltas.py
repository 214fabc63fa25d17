"""Deltas for serving benchmarks and tests, made without training: a real selection, its tensors perturbed.

A delta's *shape* (which tensors, how many bytes, which serving path) is what serving cost depends on, so a
BitFit-shaped selection whose biases are moved by noise stands in for a trained one at no training cost.
Results that use these deltas say so (``"deltas": "synthetic: ..."``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from selectune.delta import save_delta
from selectune.models import resolve_model
from selectune.selection import select
from selectune.tasks import TextClassification

SYNTHETIC_NOTE = ("synthetic: a real selection of the method on the base, trainable tensors perturbed with "
                  "N(0, scale^2) noise instead of trained (serving cost depends on the delta's shape, not its values)")


def make_perturbed_delta(base: str, method: str, out: str | Path, *, labels: list[str], seed: int, scale: float = 0.05,
                         max_length: int = 128, **options) -> Path:
    """Select ``method`` on a fresh load of ``base``, add noise to what it trains, save a delta to ``out``.

    The delta carries task metadata like one written by `selectune train` (text column ``text``), so
    `selectune predict` and `selectune serve` use it as they would a trained one.
    """
    return make_perturbed_deltas(base, method, [out], labels=labels, seed=seed, scale=scale, max_length=max_length, **options)[0]


def make_perturbed_deltas(base: str, method: str, outs: list[str | Path], *, labels: list[str], seed: int, scale: float = 0.05,
                          max_length: int = 128, **options) -> list[Path]:
    """``make_perturbed_delta`` for many outputs from one load of ``base``: each its own noise (seed + i)."""
    task = TextClassification(label_col="label", labels=list(labels), text_col="text", max_length=max_length)
    loaded = task.load_model(resolve_model(base))
    model = loaded.model
    selection = select(model, method, new_parameters=loaded.new_parameters, **options)
    # Masked weights train through their (k,) values: those move.
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    written = []
    for i, out in enumerate(outs):
        generator = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(start[name] + torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)
        written.append(save_delta(model, selection, out, metadata={"task": task.metadata(), "base_model": base}))
    return written
