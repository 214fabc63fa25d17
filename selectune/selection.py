"""A Selection is data, not a wrapper: which parameters train, how they were chosen, and the base's
fingerprint taken before anything changed. Applying it only sets ``requires_grad``, so the model stays a
plain ``nn.Module`` that HF ``Trainer``, Accelerate, DDP/FSDP and hand-written loops all train unchanged.

Element masks (``random``, ``pafi``, ``fish``, ``lt_sft``) are the exception: a masked weight is parametrized
so that only its (k,) ``values`` train (``selectune.masks``); ``merge_masks`` makes the model plain again.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from typing import Any, Iterable

import torch
import torch.nn as nn

from selectune.fingerprint import base_fingerprint
from selectune.masks import apply_masks, plain_named_parameters, plain_parameter_names
from selectune.methods import get_method
from selectune.methods.spec import MaskedResult
from selectune.roles import ROLES, parameter_roles

@dataclasses.dataclass
class Selection:
    """What trains. Saved inside every delta's JSON config."""

    method: str
    """Registered method name (``selectune methods``)."""
    options: dict[str, Any]
    """Resolved method options, e.g. ``{"roles": ["query", "mlp_in"], "include_key_bias": false}``."""
    trainable: list[str]
    """Parameter names that train, whole tensors, sorted."""
    new_parameters: list[str]
    """Parameters absent from the checkpoint (random init); always trainable, excluded from the fingerprint."""
    base_fingerprint: str
    """sha256 over sorted name/dtype/shape/bytes of the base state, new parameters excluded, taken at select time."""
    roles: dict[str, str]
    """Role of every trainable parameter (query, mlp_in, head, ...)."""
    total_parameters: int
    trainable_parameters: int
    inserted_parameters: list[str] = dataclasses.field(default_factory=list)
    """Zero biases the method added (bitfit add_missing_biases), sorted: absent from the base, so excluded from
    its fingerprint; ``load_delta`` inserts them again. They train only if in ``trainable`` (others stay zero)."""
    masked: list[str] = dataclasses.field(default_factory=list)
    """Names in ``trainable`` that train only at the entries of an element mask (sorted); the rest train whole."""
    masks: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """In memory only: bool mask per name in ``masked``, the parameter's shape. Not in JSON: a delta stores
    masks as flat indices in its safetensors."""

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_parameters / max(self.total_parameters, 1)

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it would deep-copy every mask tensor only to drop it.
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "masks"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Selection":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze everything except ``trainable``; masked names train through their mask only
        (``selectune.masks.apply_masks``). Returns the same module."""
        chosen = set(self.trainable)
        missing = chosen - plain_parameter_names(model)
        if missing:
            raise ValueError(f"selection names parameters this model does not have: {sorted(missing)[:5]}")
        no_mask = sorted(set(self.masked) - set(self.masks))
        if no_mask:
            raise ValueError(f"selection masks {no_mask[:3]} but holds no mask tensors (read from JSON?); masks live in "
                             "the delta's safetensors: use load_delta, or select again")
        whole = chosen - set(self.masked)
        for name, param in model.named_parameters():
            param.requires_grad_(name in whole)
        apply_masks(model, {n: self.masks[n] for n in self.masked})
        return model


def select(model: nn.Module, method: str = "bitfit", *, new_parameters: list[str] | None = None,
           batches: Iterable[dict[str, Any]] | None = None, **options) -> Selection:
    """Choose what trains with a registered ``method``, apply it to ``model`` and return the Selection.

    ``new_parameters``: names the checkpoint lacked (HF ``missing_keys``), as the task's loader returned them
    (``LoadedModel.new_parameters``); they train whatever the method says, and the Selection records them.
    A method with ``takes_new_parameters`` (element masks leave them out of the budget) is called with them.
    ``batches``: for data-driven methods (``spec.needs_data``: fish, lt_sft), an iterable of dicts that
    ``model(**batch)`` turns into an output with ``.loss``; other methods ignore it.
    """
    spec = get_method(method)
    resolved = spec.resolve_options(options)
    if spec.needs_data and batches is None:
        raise ValueError(f"method {spec.name!r} is fitted on data: pass batches=[...] (dicts that model(**batch) "
                         "turns into an output with .loss)")
    names = {n for n, _ in model.named_parameters()}
    new = sorted(set(new_parameters or ()) & names)
    # Fingerprint first: the base must be pristine, and new parameters are random per load.
    fingerprint = base_fingerprint(model, exclude=new)
    before = {n for n, _ in model.named_parameters()}
    inputs = {**({"batches": batches} if spec.needs_data else {}), **({"new_parameters": new} if spec.takes_new_parameters else {})}
    result = spec.select(model, **inputs, **resolved)
    masks = {n: m for n, m in result.masks.items() if n not in new} if isinstance(result, MaskedResult) else {}
    chosen = set(result.whole if isinstance(result, MaskedResult) else result) | set(masks) | set(new)
    params = dict(model.named_parameters())
    inserted = sorted(set(params) - before)  # whatever the method added is not in the base checkpoint
    roles = parameter_roles(model)
    selection = Selection(
        method=spec.name,
        options=resolved,
        trainable=sorted(chosen),
        new_parameters=new,
        base_fingerprint=fingerprint,
        roles={n: roles[n] for n in sorted(chosen)},
        total_parameters=sum(p.numel() for p in params.values()),
        trainable_parameters=sum(int(masks[n].sum()) if n in masks else params[n].numel() for n in chosen),
        inserted_parameters=inserted,
        masked=sorted(masks),
        masks=masks,
    )
    selection.apply(model)
    return selection


def trainable_report(model: nn.Module, selection: Selection) -> list[dict[str, Any]]:
    """Rows of (role, tensors, trainable params, total params, % of role, % of model), one per role present."""
    roles = parameter_roles(model)
    chosen = set(selection.trainable)
    total = Counter()
    trained = Counter()
    tensors = Counter()
    for name, param in plain_named_parameters(model):
        role = roles[name]
        total[role] += param.numel()
        if name in chosen:
            trained[role] += int(selection.masks[name].sum()) if name in selection.masks else param.numel()
            tensors[role] += 1
    all_params = sum(total.values())
    rows = []
    for role in ROLES:
        if role not in total:
            continue
        rows.append({
            "role": role,
            "tensors": tensors[role],
            "trainable": trained[role],
            "total": total[role],
            "pct_of_role": 100.0 * trained[role] / total[role],
            "pct_of_model": 100.0 * trained[role] / all_params,
        })
    rows.append({
        "role": "all",
        "tensors": sum(tensors.values()),
        "trainable": sum(trained.values()),
        "total": all_params,
        "pct_of_role": 100.0 * sum(trained.values()) / all_params,
        "pct_of_model": 100.0 * sum(trained.values()) / all_params,
    })
    return rows
