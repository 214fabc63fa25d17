"""FISH mask (Sung et al., 2021): train the ``budget`` entries with the largest empirical Fisher information,
the mean over a few batches of the squared gradient of the loss.

The batches are dicts that ``model(**batch)`` turns into an output with ``.loss`` (labels included).
Fitting leaves the model as it found it: weights, ``requires_grad`` flags, grads and train/eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn as nn

from selectune.methods.sparse import SparseOptions, batch_loss, eligible_parameters, grads_on, selector, take_batches, top_k_masks
from selectune.methods.spec import MethodSpec


@dataclass
class FishMask(SparseOptions):
    n_batches: int = field(default=8, metadata={"help": "batches the Fisher information is averaged over"})
    seed: int = field(default=0, metadata={"help": "seeds dropout while the gradients are taken"})

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.n_batches, int) or self.n_batches < 1:
            raise ValueError(f"fish: n_batches must be a whole number >= 1, got {self.n_batches!r}")

    def fit(self, model: nn.Module, batches: Iterable[dict[str, Any]] | None = None, new_parameters: Iterable[str] = ()) -> "FishMask":
        """Set ``fisher_`` (name -> mean grad^2) and ``mask_`` (name -> bool mask of its top entries)."""
        taken = take_batches(batches, self.n_batches, "fish")
        names = list(eligible_parameters(model, self.include_embeddings, new_parameters))
        with grads_on(model, names, self.seed) as params:
            fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
            for batch in taken:
                loss = batch_loss(model, batch, "fish")
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                for n, g in zip(params, grads):
                    if g is not None:
                        fisher[n] += g.detach().float() ** 2 / len(taken)
        self.fisher_ = fisher
        self.mask_ = top_k_masks(fisher, self.budget)
        return self


SPEC = MethodSpec(name="fish", summary="element mask: the budget weights with the largest empirical Fisher information (Sung et al. 2021)",
                  options=FishMask, select=selector(FishMask), default_lr=1e-4, needs_data=True, takes_new_parameters=True)
