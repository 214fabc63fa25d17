"""Element masks: train only some entries of a weight, with optimizer state the size of the mask.

A masked weight is parametrized (``torch.nn.utils.parametrize``)::

    weight = original.flatten().index_put(indices, values).view(shape)   # original frozen, values (k,) train

``values`` starts as ``original[indices]``, so the model is bitwise unchanged until it trains; entries
outside the mask are read from the frozen original and can never change, whatever the optimizer or
weight decay does; and an optimizer sees only ``values``, so Adam's state is O(k), not O(numel).

While parametrized, ``named_parameters`` shows ``<module>.parametrizations.weight.original`` (frozen) and
``<module>.parametrizations.weight.0.values`` (trainable); ``plain_name`` maps both back to
``<module>.weight``. Mirror verbs: ``apply_masks`` / ``merge_masks``. Merge before ``save_pretrained`` or
``state_dict`` export so keys are plain again; ``save_delta`` works either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

_MARK = "parametrizations"


class SparseUpdate(nn.Module):
    """Parametrization: the frozen original with the entries at ``indices`` replaced by trainable ``values``."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        indices = flat_indices(mask).to(weight.device)
        self.register_buffer("indices", indices)  # (k,) int64, sorted
        self.values = nn.Parameter(weight.detach().reshape(-1)[indices].clone())  # (k,)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # (numel,) with k entries replaced -> original's shape; gradient reaches only ``values``.
        return original.reshape(-1).index_put((self.indices,), self.values).view(original.shape)


def flat_indices(mask: torch.Tensor) -> torch.Tensor:
    """Bool mask of any shape -> sorted flat int64 indices of its True entries, (k,)."""
    return mask.reshape(-1).nonzero().squeeze(1).to(torch.int64)


@dataclass
class SparseEntries:
    """Some entries of a tensor, as a sparse delta stores them: flat ``indices`` (k,) int64, ``values`` (k,)."""

    indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, ...]

    def write_into(self, tensor: torch.Tensor) -> None:
        """Set ``tensor``'s entries at ``indices`` to ``values``, in place (the rest is untouched)."""
        with torch.no_grad():
            tensor.view(-1).index_put_((self.indices.to(tensor.device),), self.values.to(tensor.device, tensor.dtype))


def plain_name(name: str) -> str:
    """``a.parametrizations.weight.original`` / ``a.parametrizations.weight.0.values`` -> ``a.weight``."""
    parts = name.split(".")
    if _MARK not in parts:
        return name
    at = parts.index(_MARK)
    return ".".join(parts[:at] + [parts[at + 1]])


def plain_named_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter) as without masks applied: a masked weight appears once, as its frozen original."""
    # Inside a parametrization there are ``...original`` (kept) and ``...0.values`` (skipped).
    return [(plain_name(n), p) for n, p in model.named_parameters() if plain_name(n) == n or n.endswith(".original")]


def plain_parameter_names(model: nn.Module) -> set[str]:
    """Parameter names as they are without masks applied."""
    return {plain_name(n) for n, _ in model.named_parameters()}


def trainable_names(model: nn.Module) -> set[str]:
    """Plain names of the tensors that train, whole or through a mask's ``values``."""
    return {plain_name(n) for n, p in model.named_parameters() if p.requires_grad}


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def effective_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The tensor the forward pass uses for parameter ``name`` (the masked weight computed, if parametrized)."""
    module, leaf = _owner(model, name)
    return getattr(module, leaf)


def _sparse_update(module: nn.Module, leaf: str) -> SparseUpdate | None:
    if parametrize.is_parametrized(module, leaf):
        for p in module.parametrizations[leaf]:
            if isinstance(p, SparseUpdate):
                return p
    return None


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Parametrize each masked weight: its original freezes, a (k,) ``values`` vector trains.

    Idempotent: a weight already parametrized keeps its (possibly trained) values.
    """
    for name, mask in masks.items():
        module, leaf = _owner(model, name)
        update = _sparse_update(module, leaf)
        if update is None:
            weight = getattr(module, leaf)
            if tuple(mask.shape) != tuple(weight.shape):
                raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, the parameter {tuple(weight.shape)}")
            weight.requires_grad_(False)
            update = SparseUpdate(weight, mask)
            parametrize.register_parametrization(module, leaf, update)
        module.parametrizations[leaf].original.requires_grad_(False)
        update.values.requires_grad_(True)


def merge_masks(model: nn.Module) -> list[str]:
    """Undo ``apply_masks``, keeping the trained entries: plain frozen weights, plain keys. Returns the names merged."""
    merged = []
    for path, module in list(model.named_modules()):
        for leaf in list(getattr(module, _MARK, {}) or {}):
            if _sparse_update(module, leaf) is not None:
                parametrize.remove_parametrizations(module, leaf, leave_parametrized=True)
                getattr(module, leaf).requires_grad_(False)
                merged.append(f"{path}.{leaf}" if path else leaf)
    return sorted(merged)
