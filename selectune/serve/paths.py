"""Serving paths: the ways a server can run a delta's requests, each one class behind ``ServingPath``.

A delta takes the first path in ``DeltaStore.paths`` that has no obstacle to it; a third path is one class
here and one entry in that list. Each path owns its deltas' tensors (``add`` / ``remove``, batcher thread
only) and runs its share of a batch (``passes`` splits it into forward passes, ``forward`` runs one).

* ``MixedPath`` (``mixed``): bias / LayerNorm / head deltas share one forward pass (``MixedBiasModel``),
  each example with its own delta's rows of the stacked tables.
* ``GroupedPath`` (``grouped``): any delta, run per delta on a second copy of the base switched with
  ``DeltaSet`` (one copy per number of outputs, made when first needed).
"""
from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn

from selectune.multi_delta import DeltaSet
from selectune.serve.mixed_model import MixedBiasModel, MixedDelta, mixed_path_obstacle

if TYPE_CHECKING:
    from selectune.serve.delta_store import ServedDelta


@dataclass
class BoundModel:
    """A path's model bound to one pass's examples: every call of ``model`` inside ``ServingPath.bound`` runs example i
    with its own delta. A decoder calls it once per step and ``keep``s the rows still generating."""

    model: nn.Module
    keep: Callable[[torch.Tensor], None]
    """(b,) index into the current examples: only those run in the calls that follow (finished rows stop)."""


def model_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a pass computes unless the task says otherwise: the model's logits."""
    return model(**inputs).logits


class ServingPath(ABC):
    """One way to run deltas' requests on the server's base."""

    name: ClassVar[str]
    """Reported as the delta's ``path`` in ``/v1/models`` and as the ``path`` label of the metrics."""
    mixes_deltas: ClassVar[bool]
    """True when one forward pass holds examples of several deltas (counted in ``selectune_batch_deltas``)."""

    @abstractmethod
    def obstacle(self, delta: ServedDelta) -> str | None:
        """Why this path cannot serve ``delta``, or None when it can. Changes nothing."""

    @abstractmethod
    def reason(self, refusals: list[str]) -> str:
        """Why a delta is on this path (``path_reason``), given the obstacles of the paths before it."""

    def prepare(self, delta: ServedDelta) -> None:
        """Make ready, on any thread, what ``add`` will need, so that ``add`` (batcher thread) reads no file and loads
        no model: it only swaps references. Changes nothing served. Default: nothing to make ready."""

    @abstractmethod
    def add(self, delta: ServedDelta) -> None:
        """Serve ``delta``, replacing this path's delta of the same name. On failure raises with nothing changed."""

    def add_many(self, deltas: list[ServedDelta]) -> dict[str, Exception]:
        """``add`` for deltas of new names (a server's start): {name: error} of those that failed, the others served."""
        failed = {}
        for delta in deltas:
            try:
                self.add(delta)
            except Exception as err:  # this delta's refusal only
                failed[delta.name] = err
        return failed

    @abstractmethod
    def remove(self, delta: ServedDelta) -> None:
        """Stop serving ``delta`` (added earlier, and not replaced on this path since) and free what only it held."""

    @abstractmethod
    def passes(self, deltas: list[ServedDelta]) -> list[list[int]]:
        """How jobs for ``deltas`` (one per job) split into forward passes: job indices per pass, in run order."""

    @abstractmethod
    def bound(self, deltas: list[ServedDelta]) -> contextlib.AbstractContextManager[BoundModel]:
        """The model for one pass (``passes``) where example i is for ``deltas[i]``, in inference mode, for the block."""

    def forward(self, deltas: list[ServedDelta], inputs: dict[str, torch.Tensor],
                run: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] = model_logits) -> tuple[torch.Tensor, nn.Module]:
        """One forward pass: (outputs (B, C) with C at least each delta's outputs, the model that made them) for
        ``inputs`` where example i is for ``deltas[i]``; ``run(model, inputs)`` computes them (default: the logits)."""
        with self.bound(deltas) as bound:
            return run(bound.model, inputs), bound.model


class MixedPath(ServingPath):
    name = "mixed"
    mixes_deltas = True

    def __init__(self, base: nn.Module):
        self.model = MixedBiasModel(base)
        self.deltas: dict[str, ServedDelta] = {}  # by name; row order of the tables follows insertion

    def obstacle(self, delta: ServedDelta) -> str | None:
        return mixed_path_obstacle(self.model.model, delta.tensors, delta.selection.new_parameters)

    def reason(self, refusals: list[str]) -> str:
        return "biases, LayerNorm and head only: shares the batch's forward pass (per-example gather)"

    def add(self, delta: ServedDelta) -> None:
        old = self.deltas.get(delta.name)
        self.deltas[delta.name] = delta
        try:
            self._rebuild()
        except Exception:
            self.deltas.pop(delta.name)
            if old is not None:
                self.deltas[old.name] = old
            self._rebuild()
            raise

    def add_many(self, deltas: list[ServedDelta]) -> dict[str, Exception]:
        # One table build for all: one per ``add`` copies O(N^2) rows at a start with N deltas and leaves freed tables
        # scattered through the heap (measured: ~1 MB resident per BitFit delta of MiniLM at 200, against ~0.3 MB).
        before = dict(self.deltas)
        self.deltas.update((d.name, d) for d in deltas)
        try:
            self._rebuild()
            return {}
        except Exception:  # one of them does not fit: add them one by one, so that only the misfits are refused
            self.deltas = before
            self._rebuild()
        return super().add_many(deltas)

    def remove(self, delta: ServedDelta) -> None:
        if self.deltas.get(delta.name) is delta:
            del self.deltas[delta.name]
        self._rebuild()

    def mixed_delta(self, delta: ServedDelta) -> MixedDelta:
        return MixedDelta(delta.name, delta.tensors, delta.selection.new_parameters)

    def _rebuild(self) -> None:
        self.model.set_deltas([self.mixed_delta(d) for d in self.deltas.values()])

    def passes(self, deltas: list[ServedDelta]) -> list[list[int]]:
        return [list(range(len(deltas)))]  # every delta's examples in one pass

    @contextlib.contextmanager
    def bound(self, deltas: list[ServedDelta]) -> Iterator[BoundModel]:
        row_of = {name: r for r, name in enumerate(self.model.names)}
        rows = torch.tensor([row_of[d.name] for d in deltas], dtype=torch.long)  # (B,) each example's table row
        with self.model.using(rows) as model:
            yield BoundModel(model, self.model.keep)


class GroupedPath(ServingPath):
    name = "grouped"
    mixes_deltas = False

    def __init__(self, base_copy: Callable[[int], nn.Module]):
        self.base_copy = base_copy
        """n_outputs -> a fresh copy of the base with that many outputs (loading one costs a base's memory)."""
        self.sets: dict[int, DeltaSet] = {}  # number of outputs -> a base copy with its deltas
        self.deltas: dict[str, ServedDelta] = {}  # by name
        self._making_copies = threading.Lock()  # two hot loads may prepare at once; one copy per number of outputs

    def obstacle(self, delta: ServedDelta) -> str | None:
        return None  # DeltaSet writes any delta into its copy; a misfit is refused by its load in ``add``

    def reason(self, refusals: list[str]) -> str:
        return "; ".join(refusals)

    def prepare(self, delta: ServedDelta) -> None:
        with self._making_copies:
            self._set(delta.task.n_outputs)  # loading a base copy takes seconds: never on the batcher thread

    def add(self, delta: ServedDelta) -> None:
        deltas = self._set(delta.task.n_outputs)
        if delta.key not in deltas.deltas:
            # The tensors prepare_delta read and hashed (the reported version); its fingerprint was checked there.
            deltas.add(delta.key, delta.path, delta.tensors, {"selection": delta.selection.to_dict()}, verified=True)
        delta.tensors = {}  # the DeltaSet holds its own copy (a `full` delta is as large as the base)
        old = self.deltas.get(delta.name)
        self.deltas[delta.name] = delta
        if old is not None and old.key != delta.key:
            self.sets[old.task.n_outputs].unload(old.key)

    def remove(self, delta: ServedDelta) -> None:
        if self.deltas.get(delta.name) is delta:
            del self.deltas[delta.name]
        self.sets[delta.task.n_outputs].unload(delta.key)

    def _set(self, n_outputs: int) -> DeltaSet:
        if n_outputs not in self.sets:
            self.sets[n_outputs] = DeltaSet(self.base_copy(n_outputs))
        return self.sets[n_outputs]

    def passes(self, deltas: list[ServedDelta]) -> list[list[int]]:
        by_name: dict[str, list[int]] = {}  # one pass per delta, in order of first appearance
        for i, delta in enumerate(deltas):
            by_name.setdefault(delta.name, []).append(i)
        return list(by_name.values())

    @contextlib.contextmanager
    def bound(self, deltas: list[ServedDelta]) -> Iterator[BoundModel]:
        delta = deltas[0]  # one delta per pass (``passes``)
        deltas_set = self.sets[delta.task.n_outputs]
        if deltas_set.active != delta.key:
            deltas_set.activate(delta.key)
        with torch.inference_mode():
            yield BoundModel(deltas_set.model, lambda index: None)  # one delta: every row has the same weights
