"""PaFi (Liao et al., 2023): train the ``budget`` smallest-magnitude entries of the weight matrices.

Task-agnostic: the mask comes from the pretrained weights alone, so it needs no data and the same base
gives the same mask for every task. Ties (equal magnitudes) go to the earlier entry by sorted name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch.nn as nn

from selectune.methods.sparse import SparseOptions, eligible_parameters, selector, top_k_masks
from selectune.methods.spec import MethodSpec


@dataclass
class PaFiMask(SparseOptions):
    def fit(self, model: nn.Module, batches=None, new_parameters: Iterable[str] = ()) -> "PaFiMask":
        """Set ``mask_``: name -> bool mask of the smallest |w|. Needs no data."""
        scores = {n: -p.detach().abs() for n, p in eligible_parameters(model, self.include_embeddings, new_parameters).items()}
        self.mask_ = top_k_masks(scores, self.budget)
        return self


SPEC = MethodSpec(name="pafi", summary="element mask: the budget smallest-magnitude weights, task-agnostic (Liao et al. 2023)",
                  options=PaFiMask, select=selector(PaFiMask), default_lr=1e-4, takes_new_parameters=True)
