"""What the element-mask methods share: which tensors are eligible, the budget, and a global top-k.

Each method (random_mask, pafi, fish, lt_sft) is an estimator in the scikit-learn manner: its options
dataclass stores the settings, ``fit(model, batches=None)`` sets ``mask_`` (name -> bool mask), and its
registered ``select`` function returns a ``MaskedResult``. The budget is global: the k best-scored entries
over all eligible tensors together, not k per tensor.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from selectune.methods.bitfit import bias_names
from selectune.methods.spec import MaskedResult


@dataclass
class SparseOptions:
    budget: float = field(default=0.005, metadata={
        "help": "entries to train: a fraction (0 < b < 1) of the eligible tensors' parameters, or a count (whole number >= 1)"})
    include_embeddings: bool = field(default=False, metadata={"help": "let embedding tables be masked too"})
    train_biases: bool = field(default=True, metadata={"help": "train every bias whole beside the mask"})

    def __post_init__(self):
        b = self.budget
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise ValueError(f"budget must be a fraction 0 < b < 1 or a count >= 1, got {b!r}")
        if isinstance(b, float) and b.is_integer() and b >= 1:
            self.budget = b = int(b)
        if not ((isinstance(b, int) and b >= 1) or (isinstance(b, float) and 0 < b < 1)):
            raise ValueError(f"budget must be a fraction 0 < b < 1 or a whole count >= 1, got {b!r} (e.g. budget=0.005)")


def eligible_parameters(model: nn.Module, include_embeddings: bool = False, new_parameters: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Weights of >= 2 dimensions, minus embedding tables (unless asked) and ``new_parameters``, by name (sorted)."""
    embeddings = {f"{path}.{leaf}" if path else leaf for path, module in model.named_modules()
                  if isinstance(module, nn.Embedding) for leaf, _ in module.named_parameters(recurse=False)}
    new = set(new_parameters)
    return {n: p for n, p in sorted(model.named_parameters())
            if p.ndim >= 2 and n not in new and (include_embeddings or n not in embeddings)}


def budget_count(budget: float, total: int) -> int:
    """The number of entries a budget means out of ``total`` eligible ones."""
    k = budget if isinstance(budget, int) else max(1, round(budget * total))
    if k > total:
        raise ValueError(f"budget {budget} asks for {k} entries but the eligible tensors hold only {total}")
    return k


def top_k_masks(scores: dict[str, torch.Tensor], budget: float) -> dict[str, torch.Tensor]:
    """Bool masks of the k highest scores over all tensors together (ties: the earlier entry, by sorted name).

    Concatenates the scores as float32: one extra copy of the eligible tensors' size.
    """
    if not scores:
        raise ValueError("no eligible tensors to mask (weights of >= 2 dimensions outside embeddings and new parameters)")
    names = sorted(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in names])  # (N,)
    k = budget_count(budget, flat.numel())
    # A stable sort makes ties deterministic; topk's tie order is unspecified.
    chosen = torch.argsort(flat, descending=True, stable=True)[:k]
    hit = torch.zeros(flat.numel(), dtype=torch.bool)
    hit[chosen] = True
    masks, start = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = hit[start:start + size].view(scores[n].shape).to(scores[n].device)
        start += size
    return {n: m for n, m in masks.items() if m.any()}


def masked_result(model: nn.Module, masks: dict[str, torch.Tensor], train_biases: bool) -> MaskedResult:
    whole = [b for b in bias_names(model) if b not in masks] if train_biases else []
    return MaskedResult(whole=whole, masks=masks)


def selector(estimator: type) -> Callable[..., MaskedResult]:
    """The registry's select function for an estimator class: fit it, return its masks and the whole tensors."""
    def select(model: nn.Module, batches: Iterable[dict[str, Any]] | None = None, new_parameters: Iterable[str] = (),
               **options) -> MaskedResult:
        fitted = estimator(**options).fit(model, batches, new_parameters=new_parameters)
        return masked_result(model, fitted.mask_, fitted.train_biases)
    select.__name__ = f"select_{estimator.__name__.lower()}"
    return select


def take_batches(batches: Iterable[dict[str, Any]] | None, n: int, method: str) -> list[dict[str, Any]]:
    """The first ``n`` batches (all of them if fewer); refuses none."""
    taken = [] if batches is None else [b for _, b in zip(range(n), batches)]
    if not taken:
        raise ValueError(f"{method} is fitted on data: pass batches=[...] (dicts that model(**batch) turns into an output with .loss)")
    return taken


def batch_loss(model: nn.Module, batch: dict[str, Any], method: str) -> torch.Tensor:
    """``model(**batch).loss``, or a clear error for a model/batch that does not give one."""
    try:
        out = model(**batch)
    except TypeError as err:
        raise ValueError(f"{method} needs batches that {type(model).__name__}(**batch) accepts and returns a loss from; "
                         f"calling it failed: {err}") from None
    loss = getattr(out, "loss", None) if not isinstance(out, dict) else out.get("loss")
    if loss is None:
        raise ValueError(f"{method} needs model(**batch) to return an output with .loss; {type(model).__name__} returned "
                         f"{type(out).__name__} without one (does the batch hold labels?)")
    return loss


@contextlib.contextmanager
def grads_on(model: nn.Module, names: Iterable[str], seed: int | None = None) -> Iterator[dict[str, nn.Parameter]]:
    """Only ``names`` require grad inside; flags, grads and the global RNG (dropout) are restored after."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    chosen = set(names)
    training = model.training
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            for n, p in model.named_parameters():
                p.requires_grad_(n in chosen)
                p.grad = None
            yield {n: p for n, p in model.named_parameters() if n in chosen}
    finally:
        model.train(training)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None
