"""One forward pass for examples of many deltas: per-example bias gather from stacked tables, heads per group.

A bias is added per example, so a batch can mix deltas that differ only in biases. For every Linear
whose bias some delta changes, the biases of all mixed deltas are stacked into a (R, out) table (row r
= delta r's bias, the base's where it leaves it alone) and the layer computes::

    x @ W.T + table[rows]          # x: (B, *, in), table[rows]: (B, out) broadcast over positions

with one shared weight, so the cost over the plain model is one (R, out) gather per layer. A LayerNorm's
affine is per example the same way (``layernorm`` deltas train its weight too). Heads (classifier,
pooler: role ``head``, or parameters new at load) may differ in whole weights and even output width
(a delta with 3 labels next to one with 2); they run per group of examples sharing a delta, on (b, in)
rows, which is cheap next to the body. Logits are padded to the widest head; callers slice each example's
own ``num_labels``.

Deltas that change body weights (``full``, sparse masks, ``pattern`` over weights, ...) cannot share the
pass; ``mixed_path_obstacle`` says why, and the server groups their requests per delta instead.

The model's parameters are never written: the gathered forwards are installed on the module instances
(``install``/``remove``), tables live outside the ``state_dict``, so the base fingerprint stays the base's.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from selectune.masks import SparseEntries
from selectune.roles import parameter_roles


@dataclass
class MixedDelta:
    """What the mixed pass needs of one delta: its dense tensors by parameter name (CPU)."""

    name: str
    tensors: dict[str, torch.Tensor]
    """By parameter name. ``set_deltas`` swaps each tensor that went into a table for a view of its row (the same
    values), so a server with many deltas holds each value once."""
    new_parameters: list[str] = field(default_factory=list)
    """Parameters absent from the base checkpoint (a new classifier): their shape may differ from the base's."""


def mixed_path_obstacle(model: nn.Module, tensors: dict[str, torch.Tensor | SparseEntries],
                        new_parameters: list[str]) -> str | None:
    """Why the delta cannot share a mixed batch on ``model``, or None if it can.

    It can when every tensor is dense and is the bias of a ``nn.Linear``, the weight or bias of a
    ``nn.LayerNorm``, or a parameter of a head ``nn.Linear`` (role ``head`` or new at load).
    """
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    role_of = parameter_roles(model)
    new = set(new_parameters)
    for name, value in sorted(tensors.items()):
        if isinstance(value, SparseEntries):
            return f"changes individual entries of {name} (element mask); served per delta"
        path, _, leaf = name.rpartition(".")
        module = modules.get(path)
        is_head = role_of.get(name) == "head" or name in new
        if isinstance(module, nn.Linear) and is_head and leaf in ("weight", "bias"):
            # Only a new head (role ``head``, not any Linear listed as new) may change its output width (number of
            # labels), and only with its weight: the widest head sets the width of the whole mixed pass.
            base_shape = tuple(params[name].shape) if name in params else None
            if base_shape is not None and tuple(value.shape) != base_shape:
                width_only = (name in new and role_of.get(name) == "head" and value.dim() >= 1
                              and tuple(value.shape[1:]) == base_shape[1:])
                with_weight = f"{path}.weight" in tensors
                if not (width_only and with_weight):
                    return f"{name} has shape {tuple(value.shape)}, the base's is {base_shape}"
            continue
        if isinstance(module, nn.Linear) and leaf == "bias":
            if tuple(value.shape) != (module.out_features,):
                return f"{name} has shape {tuple(value.shape)}, expected ({module.out_features},)"
            continue
        if isinstance(module, nn.LayerNorm) and leaf in ("weight", "bias") and module.elementwise_affine:
            if tuple(value.shape) != tuple(module.normalized_shape):
                return f"{name} has shape {tuple(value.shape)}, expected {tuple(module.normalized_shape)}"
            continue
        kind = type(module).__name__ if module is not None else "no module"
        return f"changes {name} ({kind} {leaf}), which a per-example bias gather cannot express; served per delta"
    return None


@dataclass
class _Batch:
    """Per forward pass: which table row each example uses, and the examples of each row present."""

    rows: torch.Tensor  # (B,) int64

    @functools.cached_property
    def groups(self) -> list[tuple[int, torch.Tensor]]:
        """(row, (b,) example indices) per row present, rows ascending; only heads need them, once per pass."""
        return [(int(r), (self.rows == r).nonzero().squeeze(1)) for r in torch.unique(self.rows).tolist()]


class MixedBiasModel:
    """``model`` plus stacked per-delta tables; ``forward(rows, **inputs)`` runs one mixed batch.

    ``set_deltas`` (re)builds the tables for a list of deltas; row ``i`` of every table is ``deltas[i]``.
    Not thread-safe: one caller at a time (the server's batcher thread does forwards and swaps).
    """

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.names: list[str] = []
        self._batch: _Batch | None = None
        self._installed: list[nn.Module] = []

    # ---- tables --------------------------------------------------------------------------------
    def set_deltas(self, deltas: list[MixedDelta]) -> None:
        """Build every table for ``deltas`` (row i = deltas[i]) and install the gathered forwards."""
        self.remove()
        modules = dict(self.model.named_modules())
        tables: dict[str, torch.Tensor] = {}  # parameter name -> its (R, ...) table, row i = deltas[i]'s
        touched: dict[str, set[str]] = {}
        for delta in deltas:
            for name in delta.tensors:
                path, _, leaf = name.rpartition(".")
                touched.setdefault(path, set()).add(leaf)
        for path, leaves in sorted(touched.items()):
            module = modules[path]
            on = functools.partial(_like, module.weight)  # tables on the model's device and dtype
            if isinstance(module, nn.Linear) and "weight" in leaves:  # a head: whole weights per delta
                base_bias = module.bias.detach() if module.bias is not None else None
                weights = [on(d.tensors.get(f"{path}.weight", module.weight.detach())) for d in deltas]
                biases = [on(d.tensors.get(f"{path}.bias", base_bias)) for d in deltas]
                width = max(w.shape[0] for w in weights)
                self._install(module, functools.partial(_grouped_linear, module, self, weights, biases, width))
            elif isinstance(module, nn.Linear):
                base = module.bias.detach() if module.bias is not None else torch.zeros(module.out_features)
                table = tables[f"{path}.bias"] = torch.stack([on(d.tensors.get(f"{path}.bias", base)) for d in deltas])  # (R, out)
                self._install(module, functools.partial(_gathered_linear, module, self, table))
            elif isinstance(module, nn.LayerNorm):
                weight_table = None  # the base's scale for every row, applied fused
                if "weight" in leaves:
                    weight_table = tables[f"{path}.weight"] = torch.stack(
                        [on(d.tensors.get(f"{path}.weight", module.weight.detach())) for d in deltas])  # (R, H)
                bias_table = tables[f"{path}.bias"] = torch.stack(
                    [on(d.tensors.get(f"{path}.bias", module.bias.detach())) for d in deltas])  # (R, H)
                self._install(module, functools.partial(_gathered_layer_norm, module, self, weight_table, bias_table))
            else:  # mixed_path_obstacle keeps such deltas off this path
                raise ValueError(f"{path}: {type(module).__name__} cannot be gathered per example")
        _share_rows(deltas, tables)
        self.names = [d.name for d in deltas]

    def _install(self, module: nn.Module, forward) -> None:
        # An instance attribute shadows the class's forward; ``del`` restores it. Parameters stay as they were.
        module.forward = forward
        self._installed.append(module)

    def remove(self) -> None:
        """Mirror of ``set_deltas``: the plain forwards again; the model is the base, untouched."""
        for module in self._installed:
            del module.forward
        self._installed = []
        self.names = []

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, rows: torch.Tensor, **inputs) -> torch.Tensor:
        """Logits (B, C_max) for ``inputs`` where example i uses delta ``rows[i]`` (a row of ``names``).

        Heads of different widths are zero-padded to the widest: slice each example's own number of outputs.
        """
        with self.using(rows) as model:
            return model(**inputs).logits

    @contextlib.contextmanager
    def using(self, rows: torch.Tensor) -> Iterator[nn.Module]:
        """The model, whose every forward inside the block runs example i with delta ``rows[i]`` (any number of calls:
        a decoder's steps); ``keep`` narrows the batch between calls."""
        self._batch = _Batch(rows)
        try:
            with torch.inference_mode():
                yield self.model
        finally:
            self._batch = None

    def keep(self, index: torch.Tensor) -> None:
        """Inside ``using``: only the examples at ``index`` (a (b,) index into the current rows) run from now on."""
        self._batch = _Batch(self.current_rows().index_select(0, index))

    def current_rows(self) -> torch.Tensor:
        if self._batch is None:
            raise RuntimeError("no mixed batch is running; call inside MixedBiasModel.using(rows)")
        return self._batch.rows

    def current(self, x: torch.Tensor) -> _Batch:
        batch = self._batch
        if batch is None:
            raise RuntimeError("a gathered layer ran outside MixedBiasModel.forward; call forward(rows, **inputs)")
        if x.shape[0] != batch.rows.shape[0]:
            raise RuntimeError(f"a gathered layer got {x.shape[0]} rows for a batch of {batch.rows.shape[0]} examples: "
                               "this model reshapes the batch dimension, so its deltas must be served per delta")
        return batch


def _share_rows(deltas: list[MixedDelta], tables: dict[str, torch.Tensor]) -> None:
    # Each delta's tensor that a table copied becomes a view of its row: equal values, held once (the copy the delta
    # file was read into is freed). One kept on another device or dtype than the table's stays as it is.
    for name, table in tables.items():
        for row, delta in enumerate(deltas):
            value = delta.tensors.get(name)
            if value is not None and value.dtype == table.dtype and value.device == table.device:
                delta.tensors[name] = table[row]


def _like(reference: torch.Tensor, value: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None else value.to(reference.device, reference.dtype)


def _per_example(values: torch.Tensor, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # (R, out) table -> (B, 1, ..., 1, out): broadcasts over every position of x (B, *, out).
    picked = values.index_select(0, rows)
    return picked.view(picked.shape[0], *([1] * (x.dim() - 2)), picked.shape[1])


def _gathered_linear(module: nn.Linear, mixed: MixedBiasModel, table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # (B, *, in) @ (in, out) + (B, 1.., out), the way F.linear(x, W, b) adds its one bias: each example's bias is
    # written into the output, then the shared GEMM accumulates onto it in place (beta=1). No (B, *, out) temporary
    # and no second pass over the output, and each example's answer is bit for bit its delta's merged Linear.
    batch = mixed.current(x)
    out_features = table.shape[1]
    out = _per_example(table, batch.rows, x).expand(*x.shape[:-1], out_features).contiguous()  # (B, *, out)
    out.view(-1, out_features).addmm_(x.reshape(-1, x.shape[-1]), module.weight.t())
    return out


def _gathered_layer_norm(module: nn.LayerNorm, mixed: MixedBiasModel, weight_table: torch.Tensor | None,
                         bias_table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    batch = mixed.current(x)
    if weight_table is None:  # shared scale, fused; per-example shift
        out = F.layer_norm(x, module.normalized_shape, module.weight, None, module.eps)
        return out.add_(_per_example(bias_table, batch.rows, x))
    normed = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    return torch.addcmul(_per_example(bias_table, batch.rows, x), normed, _per_example(weight_table, batch.rows, x))


def _grouped_linear(module: nn.Linear, mixed: MixedBiasModel, weights: list[torch.Tensor], biases: list[torch.Tensor | None],
                    width: int, x: torch.Tensor) -> torch.Tensor:
    # Heads: each group of examples through its own delta's (out_r, in) weight; padded to (B, *, width).
    batch = mixed.current(x)
    out = x.new_zeros(*x.shape[:-1], width)
    for row, index in batch.groups:
        weight = weights[row]
        out[index, ..., : weight.shape[0]] = F.linear(x.index_select(0, index), weight, biases[row])
    return out
