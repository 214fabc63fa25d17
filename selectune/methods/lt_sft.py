"""Lottery-ticket sparse fine-tuning (LT-SFT, Ansell et al., 2022): train every eligible weight (with the
biases and new parameters) for a few steps, keep the ``budget`` entries that moved most, then put the model
back to its original values bitwise; training proper then updates only those entries.

The batches are dicts that ``model(**batch)`` turns into an output with ``.loss``; steps cycle through the
first ``n_batches``. SGD ranks entries by accumulated gradient; AdamW's first steps move almost every entry
by about ``lr``, so its ranking needs more steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn as nn

from selectune.methods.sparse import SparseOptions, batch_loss, eligible_parameters, grads_on, selector, take_batches, top_k_masks
from selectune.methods.bitfit import bias_names
from selectune.methods.spec import MethodSpec


@dataclass
class LotteryTicketMask(SparseOptions):
    steps: int = field(default=8, metadata={"help": "steps of full training that rank the entries"})
    lr: float = field(default=1e-2, metadata={"help": "learning rate of those steps"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd or adamw, for the ranking steps"})
    n_batches: int = field(default=8, metadata={"help": "batches the ranking steps cycle through"})
    seed: int = field(default=0, metadata={"help": "seeds dropout during the ranking steps"})

    def __post_init__(self):
        super().__post_init__()
        for name in ("steps", "n_batches"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"lt_sft: {name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"lt_sft: optimizer must be sgd or adamw, got {self.optimizer!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lt_sft: lr must be > 0, got {self.lr!r}")

    def fit(self, model: nn.Module, batches: Iterable[dict[str, Any]] | None = None,
            new_parameters: Iterable[str] = ()) -> "LotteryTicketMask":
        """Set ``change_`` (name -> |w_after - w_before|) and ``mask_``; the model ends bitwise as it began."""
        taken = take_batches(batches, self.n_batches, "lt_sft")
        eligible = list(eligible_parameters(model, self.include_embeddings, new_parameters))
        trained = eligible + bias_names(model) + list(new_parameters)
        # Every tensor of the state (buffers too: BatchNorm statistics) is put back exactly afterwards.
        saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        try:
            with grads_on(model, trained, self.seed) as params:
                model.train()
                make = torch.optim.SGD if self.optimizer == "sgd" else torch.optim.AdamW
                optimizer = make(list(params.values()), lr=self.lr)
                for step in range(self.steps):
                    loss = batch_loss(model, taken[step % len(taken)], "lt_sft")
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                self.change_ = {n: (params[n].detach() - saved[n]).abs() for n in eligible}
        finally:
            with torch.no_grad():
                for k, v in model.state_dict(keep_vars=True).items():
                    v.copy_(saved[k])
        self.mask_ = top_k_masks(self.change_, self.budget)
        return self


SPEC = MethodSpec(name="lt_sft", summary="element mask: the budget weights that moved most in a few steps of full training, "
                  "then reset (Ansell et al. 2022)", options=LotteryTicketMask, select=selector(LotteryTicketMask),
                  default_lr=1e-4, needs_data=True, takes_new_parameters=True)
