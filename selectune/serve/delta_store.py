"""The deltas one server holds on one base, and running a batch of their requests.

Two paths, chosen per delta when it loads (``/v1/models`` reports it):

* ``mixed``: bias / LayerNorm / head deltas share one forward pass (``MixedBiasModel``), each example
  with its own delta's rows of the stacked tables.
* ``grouped``: deltas that change body weights (``full``, element masks, ...) run per delta on a second
  copy of the base, switched with ``DeltaSet`` (one copy per number of labels, made when first needed).

Loading is split so that serving never waits on disk: ``prepare`` (any thread) reads the files, checks the
base fingerprint and picks the path; ``commit`` and ``remove`` (the batcher thread, between batches) swap
the tables. ``prepare_delta`` is the one function that turns a name into a served delta.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from selectune.delta import DELTA_CONFIG, DeltaError, DeltaFingerprintMismatch, base_fingerprint, read_delta
from selectune.masks import SparseEntries
from selectune.models import resolve_model
from selectune.multi_delta import DeltaSet
from selectune.selection import Selection
from selectune.serve.inputs import collate
from selectune.serve.mixed_model import MixedBiasModel, MixedDelta, mixed_path_obstacle
from selectune.tasks import LoadedModel, Task, load_base_model, task_from_metadata

log = logging.getLogger("selectune.serve")
DELTA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MIXED, GROUPED = "mixed", "grouped"


@dataclass
class ServedDelta:
    name: str
    path: str
    version: str
    """sha256 of the delta's safetensors file: the exact weights that answered."""
    task: Task
    selection: Selection
    serving_path: str
    """``mixed`` (shares the batch's forward pass) or ``grouped`` (its own pass per batch)."""
    reason: str
    tensors: dict[str, torch.Tensor | SparseEntries] = field(repr=False, default_factory=dict)

    @property
    def key(self) -> str:
        """Name and version: a reload of new weights sits beside the old until it is ready."""
        return f"{self.name}@{self.version}"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "path": self.serving_path, "path_reason": self.reason,
                "method": self.selection.method, "task": self.task.name, "labels": self.task.labels,
                **self.task.describe(),
                "trainable_parameters": self.selection.trainable_parameters, "source": self.path}


def is_registry(deltas_dir: str | Path) -> bool:
    from selectune.registry.store import DATABASE

    return (Path(deltas_dir) / DATABASE).is_file()


def _production_delta(registry_dir: str | Path, name: str) -> Path:
    """A registry's ``name@production`` (hashes verified); a reload after promote/rollback picks the new one."""
    from selectune.registry import RegistryError, resolve

    try:
        return resolve(registry_dir, f"{name}@production")
    except RegistryError as err:
        raise DeltaError(f"registry {registry_dir}: {err}") from None


def find_deltas(deltas_dir: str | Path) -> dict[str, Path]:
    """Deltas in a folder, by name: ``DIR/<name>/delta_config.json`` or a train run ``DIR/<name>/delta/``;
    or, when DIR is a `selectune registry`, every name's ``production`` version."""
    root = Path(deltas_dir)
    if not root.is_dir():
        raise DeltaError(f"--deltas {deltas_dir} is not a folder; give a folder with one sub-folder per delta.")
    if is_registry(root):
        from selectune.registry import Registry

        with Registry(root) as registry:
            names = [n for n in registry.names() if registry.alias(n, "production") is not None]
        found = {}
        for name in names:
            try:
                found[name] = _production_delta(root, name)
            except DeltaError as err:
                log.warning("skipping %s@production: %s", name, err)
        return found
    found = {}
    for child in sorted(root.iterdir()):
        if child.is_dir():
            try:
                found[child.name] = resolve_delta_source(root, child.name)
            except DeltaError:
                log.warning("skipping %s: no %s in it or in its delta/ folder", child, DELTA_CONFIG)
    return found


def resolve_delta_source(deltas_dir: str | Path, name: str) -> Path:
    """The folder the delta ``name`` is read from. The one place a name becomes a path (a registry reference
    like ``name@production`` would be resolved here)."""
    if not DELTA_NAME.match(name):
        raise DeltaError(f"delta name {name!r} is not allowed; use letters, digits, '.', '_' and '-' (up to 128).")
    if is_registry(deltas_dir):
        return _production_delta(deltas_dir, name)
    folder = Path(deltas_dir) / name
    for candidate in (folder, folder / "delta"):
        if (candidate / DELTA_CONFIG).is_file():
            return candidate
    raise DeltaError(f"no delta named {name!r} in {deltas_dir}: expected {folder}/{DELTA_CONFIG} (or {folder}/delta/{DELTA_CONFIG}).")


def load_base(base: str, num_labels: int = 2) -> tuple[type[Task], LoadedModel]:
    """(the task class that runs on the base, the base in eval mode + its processor). A task that adds a head
    (text classification) gives it ``num_labels`` outputs."""
    return load_base_model(resolve_model(base), n_outputs=num_labels)


class DeltaStore:
    """One base, its deltas on the mixed and grouped paths, and ``run`` for a batch of requests."""

    def __init__(self, base: str):
        self.base = base
        self.task_class, loaded = load_base(base)
        self.model, self.tokenizer = loaded.model, loaded.processor
        self.mixed = MixedBiasModel(self.model)
        self.deltas: dict[str, ServedDelta] = {}  # what the batcher thread serves
        self._grouped: dict[int, DeltaSet] = {}  # number of outputs -> a base copy with its deltas
        self._fingerprints: dict[frozenset[str], str] = {}
        self.tokenizer_lock = threading.Lock()  # a fast tokenizer must not be called from two threads at once

    # ---- loading -------------------------------------------------------------------------------
    def fingerprint(self, exclude: list[str]) -> str:
        # The mixed model's parameters are never written, so its fingerprint per exclude set can be cached.
        key = frozenset(exclude)
        if key not in self._fingerprints:
            self._fingerprints[key] = base_fingerprint(self.model, exclude=key)
        return self._fingerprints[key]

    def prepare_delta(self, name: str, source: str | Path) -> ServedDelta:
        """Read the delta at ``source``, check it belongs to this base, and choose its path. Changes nothing served.

        Raises ``DeltaError`` (``DeltaFingerprintMismatch`` for another base) with the reason.
        """
        if not DELTA_NAME.match(name):
            raise DeltaError(f"delta name {name!r} is not allowed; use letters, digits, '.', '_' and '-' (up to 128).")
        tensors, config = read_delta(source)
        selection = Selection.from_dict(config["selection"])
        actual = self.fingerprint([*selection.new_parameters, *selection.inserted_parameters])
        if actual != selection.base_fingerprint:
            raise DeltaFingerprintMismatch(selection.base_fingerprint, actual, str(source))
        meta = config.get("metadata", {}).get("task")
        if not meta:
            raise DeltaError(f"delta {source} has no task metadata (labels, text column); it was not written by "
                             "`selectune train`, so the server cannot tell what its outputs mean.")
        task = task_from_metadata(meta)
        if not type(task).claims_model_dir(resolve_model(self.base)):
            raise DeltaError(f"delta {source} is a {task.name} delta but the base {self.base} is a {self.task_class.name} model.")
        obstacle = mixed_path_obstacle(self.model, tensors, selection.new_parameters)
        if obstacle is None:
            path, reason = MIXED, "biases, LayerNorm and head only: shares the batch's forward pass (per-example gather)"
        else:
            path, reason = GROUPED, obstacle
        return ServedDelta(name=name, path=str(source), version=config["weights_sha256"], task=task, selection=selection,
                           serving_path=path, reason=reason, tensors=tensors)

    def commit(self, delta: ServedDelta) -> None:
        """Serve ``delta``, replacing one of the same name only once the new one is in place. Batcher thread only."""
        old = self.deltas.get(delta.name)
        if delta.serving_path == GROUPED:
            deltas = self._grouped_set(delta.task.n_outputs)
            if delta.key not in deltas.deltas:
                deltas.load(delta.key, delta.path, force=True)  # fingerprint already checked by prepare_delta
            delta.tensors = {}  # the DeltaSet holds its own copy (a `full` delta is as large as the base)
        self.deltas[delta.name] = delta
        if MIXED in (delta.serving_path, getattr(old, "serving_path", None)):
            try:
                self._rebuild_mixed()
            except Exception:
                self.deltas.pop(delta.name)
                if old is not None:
                    self.deltas[old.name] = old
                self._rebuild_mixed()
                raise
        if old is not None and old.serving_path == GROUPED and old.key != delta.key:
            self._grouped[old.task.n_outputs].unload(old.key)

    def remove(self, name: str) -> None:
        """Stop serving ``name``. Batcher thread only."""
        delta = self.deltas.pop(name)
        if delta.serving_path == GROUPED:
            self._grouped[delta.task.n_outputs].unload(delta.key)
        else:
            self._rebuild_mixed()

    def mixed_delta(self, name: str) -> MixedDelta:
        delta = self.deltas[name]
        return MixedDelta(delta.name, delta.tensors, delta.selection.new_parameters)

    def _rebuild_mixed(self) -> None:
        self.mixed.set_deltas([self.mixed_delta(n) for n, d in self.deltas.items() if d.serving_path == MIXED])

    def _grouped_set(self, n_outputs: int) -> DeltaSet:
        if n_outputs not in self._grouped:
            _, loaded = load_base(self.base, num_labels=n_outputs)
            self._grouped[n_outputs] = DeltaSet(loaded.model)
        return self._grouped[n_outputs]

    # ---- serving -------------------------------------------------------------------------------
    def run(self, jobs: list[tuple[str, list[dict[str, Any]]]]) -> list[tuple[list[dict[str, Any]], ServedDelta]]:
        """Predictions for each job (delta name, encoded examples), in order; mixed jobs share one forward pass.

        Returns, per job, (one prediction per example, the delta that answered).
        """
        results: list[Any] = [None] * len(jobs)
        mixed = [i for i, (name, _) in enumerate(jobs) if self.deltas[name].serving_path == MIXED]
        if mixed:
            rows_of = {name: r for r, name in enumerate(self.mixed.names)}
            examples = [e for i in mixed for e in jobs[i][1]]
            rows = torch.tensor([rows_of[jobs[i][0]] for i in mixed for _ in jobs[i][1]], dtype=torch.long)
            logits = self.mixed.forward(rows, **self._collate(examples))
            self._split(jobs, mixed, logits, self.model, results)
        grouped: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(jobs):
            if self.deltas[name].serving_path == GROUPED:
                grouped.setdefault(name, []).append(i)
        for name, indices in grouped.items():
            delta = self.deltas[name]
            deltas = self._grouped[delta.task.n_outputs]
            if deltas.active != delta.key:
                deltas.activate(delta.key)
            examples = [e for i in indices for e in jobs[i][1]]
            with torch.inference_mode():
                logits = deltas.model(**self._collate(examples)).logits
            self._split(jobs, indices, logits, deltas.model, results)
        return results

    def _collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        with self.tokenizer_lock:
            return collate(self.task_class, self.tokenizer, examples)

    def _split(self, jobs, indices: list[int], logits: torch.Tensor, model: nn.Module, results: list) -> None:
        start = 0
        for i in indices:
            name, examples = jobs[i]
            delta = self.deltas[name]
            part = logits[start:start + len(examples), : delta.task.n_outputs].float()  # (n, C) of this delta's head
            start += len(examples)
            results[i] = (format_predictions(delta.task, model, part), delta)


def format_predictions(task: Task, model: nn.Module, logits: torch.Tensor) -> list[dict[str, Any]]:
    """(n, C) logits -> one answer per example, as the task formats it (e.g. {label, probabilities} or {value})."""
    return task.format_outputs(model, logits)
