"""Many named deltas on one base model: load them, switch which one is active, unload back to the exact base.

Only the tensors some delta touches are ever copied: their original values (on CPU) and each delta's
values (on CPU, as ``read_delta`` returns them). Switching restores the originals and writes the next
delta's tensors, so a BitFit delta on a 7B model costs a few MB to keep and microseconds to switch, and
deltas of different methods (bitfit, head, full, layernorm, pattern) coexist. The model stays a plain
``nn.Module`` throughout.

    deltas = DeltaSet(model)
    deltas.load("fraud", "out/fraud/delta")   # fingerprint verified against the untouched base
    deltas.load("churn", "out/churn/delta")
    deltas.activate("fraud"); model(**batch)
    deltas.unload_all()                        # state_dict bitwise equal to before, same keys

Verbs are mirror pairs: load/unload, activate/deactivate.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from selectune.delta import DeltaError, read_delta, verify_base, write_delta_tensors
from selectune.methods.bias_insertion import remove_biases
from selectune.selection import Selection


@dataclass
class LoadedDelta:
    path: str
    tensors: dict[str, torch.Tensor]
    """Trained values by parameter name, on CPU."""
    selection: Selection
    config: dict[str, Any]


class DeltaSet:
    """Named deltas held beside one base ``model``; at most one is written into it at a time."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.deltas: dict[str, LoadedDelta] = {}
        self.active: str | None = None
        self._originals: dict[str, torch.Tensor] = {}  # base values (CPU) of every tensor a delta touches
        self._inserted: list[str] = []  # zero biases the active delta inserted; removed on deactivate

    def load(self, name: str, path: str | os.PathLike, *, force: bool = False) -> dict[str, Any]:
        """Read the delta at ``path`` under ``name`` after checking it fits this base; returns its config.

        The check runs on the untouched base (the active delta is taken off, then put back), and the delta is
        written once and taken off again, so a bad name or shape is refused here, not at ``activate``.
        """
        if name in self.deltas:
            raise DeltaError(f"a delta named {name!r} is already loaded; unload it first or choose another name")
        tensors, config = read_delta(path)
        self.add(name, path, tensors, config, force=force)
        return config

    def add(self, name: str, path: str | os.PathLike, tensors: dict[str, Any], config: dict[str, Any], *,
            force: bool = False, verified: bool = False) -> None:
        """``load`` of a delta already read with ``read_delta`` (``tensors``, ``config``): reads no file.

        ``verified``: the caller already checked its base fingerprint against this model's base (a server checks it
        once on its own copy of the base), so the pass over every weight is skipped.
        """
        if name in self.deltas:
            raise DeltaError(f"a delta named {name!r} is already loaded; unload it first or choose another name")
        selection = Selection.from_dict(config["selection"])
        was_active = self.active
        self.deactivate()
        try:
            if not verified:
                verify_base(self.model, selection, path, force=force)
            params = dict(self.model.named_parameters())
            # Inserted biases have no original: the base lacks them and deactivate removes them.
            originals = {n: params[n].detach().to("cpu", copy=True) for n in tensors if n in params and n not in self._originals}
            self._inserted = write_delta_tensors(self.model, tensors, selection, path)
            self._originals.update(originals)
            self.deltas[name] = LoadedDelta(str(path), tensors, selection, config)
            self.active = name  # so deactivate undoes the trial write
            self.deactivate()
        finally:
            if was_active is not None:
                self.activate(was_active)

    def unload(self, name: str) -> None:
        """Forget delta ``name`` (deactivating it first if active) and the originals only it needed."""
        self._get(name)
        if self.active == name:
            self.deactivate()
        del self.deltas[name]
        # Safe: a tensor no remaining delta touches holds its original value (the active delta does not touch it).
        still_used = {n for d in self.deltas.values() for n in d.tensors}
        self._originals = {n: v for n, v in self._originals.items() if n in still_used}

    def unload_all(self) -> None:
        """Deactivate and forget every delta: the model's state_dict is the original one, bitwise, same keys."""
        self.deactivate()
        self.deltas.clear()
        self._originals.clear()

    def activate(self, name: str) -> None:
        """Make delta ``name`` the one written into the model (the previous one is taken off first)."""
        delta = self._get(name)
        self.deactivate()
        self._inserted = write_delta_tensors(self.model, delta.tensors, delta.selection, delta.path)
        self.active = name

    def deactivate(self) -> None:
        """Restore the base: original values of every touched tensor; inserted zero biases removed."""
        if self.active is None:
            return
        touched = self.deltas[self.active].tensors if self.active in self.deltas else {}
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n in touched:
                if n in self._originals:
                    params[n].copy_(self._originals[n])
        remove_biases(self.model, self._inserted)
        self._inserted = []
        self.active = None

    def _get(self, name: str) -> LoadedDelta:
        if name not in self.deltas:
            raise KeyError(f"no delta named {name!r} is loaded; loaded: {', '.join(sorted(self.deltas)) or 'none'}")
        return self.deltas[name]
