"""Random element mask: ``budget`` entries drawn uniformly from the eligible weights. The sparse baseline
every data-driven mask (fish, lt_sft) must beat."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn

from selectune.methods.sparse import SparseOptions, eligible_parameters, selector, top_k_masks
from selectune.methods.spec import MethodSpec


@dataclass
class RandomMask(SparseOptions):
    seed: int = field(default=0, metadata={"help": "the draw; the same seed gives the same mask"})

    def fit(self, model: nn.Module, batches=None, new_parameters: Iterable[str] = ()) -> "RandomMask":
        """Set ``mask_``: name -> bool mask. Needs no data."""
        generator = torch.Generator().manual_seed(self.seed)
        # Uniform scores, top-k of them = k entries drawn uniformly without replacement.
        scores = {n: torch.rand(p.shape, generator=generator) for n, p in eligible_parameters(model, self.include_embeddings, new_parameters).items()}
        self.mask_ = top_k_masks(scores, self.budget)
        return self


SPEC = MethodSpec(name="random", summary="element mask: budget entries of the weight matrices drawn at random (sparse baseline)",
                  options=RandomMask, select=selector(RandomMask), default_lr=1e-4, takes_new_parameters=True)
# default_lr: few entries of pretrained weights move, as in full fine-tuning (3e-5) but sparser, so a little higher.
