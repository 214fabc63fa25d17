"""The deltas one server holds on one base, and running a batch of their requests.

Each delta takes the first serving path (``paths.py``: ``mixed``, then ``grouped``) that can serve it;
``/v1/models`` reports which and why.

Loading is split so that serving never waits on disk: ``prepare`` (any thread) reads the files, checks the
base fingerprint and picks the path; ``commit`` and ``remove`` (the batcher thread, between batches) swap
the tables. ``prepare_delta`` is the one function that turns a name into a served delta.
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from selectune.delta import DELTA_CONFIG, DeltaError, DeltaFingerprintMismatch, delta_shape_problem, read_delta
from selectune.fingerprint import base_fingerprint
from selectune.masks import SparseEntries
from selectune.models import resolve_model
from selectune.refs import resolve_trained_model
from selectune.selection import Selection
from selectune.serve.generation import Generation, greedy_decode
from selectune.serve.inputs import collate
from selectune.serve.paths import GroupedPath, MixedPath, ServingPath
from selectune.tasks import LoadedModel, Task, load_base_model, task_from_metadata

log = logging.getLogger("selectune.serve")
DELTA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ServedDelta:
    name: str
    path: str
    version: str
    """sha256 of the delta's safetensors file: the exact weights that answered."""
    task: Task
    selection: Selection
    serving_path: str
    """Name of the ``ServingPath`` it runs on: ``mixed`` (shares the batch's forward pass) or ``grouped`` (its own pass)."""
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


def named_deltas(deltas: str | Path) -> dict[str, str] | None:
    """``--deltas NAME=MODEL,NAME=MODEL`` -> {NAME: MODEL}; None when DELTAS is a folder (or a registry)."""
    if "=" not in str(deltas) or Path(deltas).is_dir():
        return None
    named = {}
    for item in filter(None, (part.strip() for part in str(deltas).split(","))):
        name, sep, given = (p.strip() for p in item.partition("="))
        if not sep or not DELTA_NAME.match(name) or not given or name in named:
            raise DeltaError(f"--deltas item {item!r} is not NAME=MODEL with a new name of letters, digits, '.', '_' and '-'; "
                             "write e.g. --deltas risk=runs/risk,triage=triage@production")
        named[name] = given
    return named


def _named_delta(name: str, given: str) -> Path:
    """The delta folder of MODEL in ``NAME=MODEL``: a run, its delta/, or a registry reference (re-read on every reload,
    so ``NAME@production`` follows promote and rollback)."""
    try:
        trained = resolve_trained_model(given, option="deltas")
    except ValueError as err:  # not found, no such registry or version: a refusal the load route reports (422)
        raise DeltaError(f"{name}: {err}") from None
    if trained.delta is None:
        raise DeltaError(f"--deltas {name}={given} is a merged model; a server puts many deltas on one base, so give the "
                         "training run, its delta/ folder or a registry reference instead.")
    return Path(trained.delta)


def find_deltas(deltas_dir: str | Path) -> dict[str, Path]:
    """Deltas in a folder, by name: ``DIR/<name>/delta_config.json`` or a train run ``DIR/<name>/delta/``;
    or, when DIR is a `selectune registry`, every name's ``production`` version; or ``NAME=MODEL,...``
    (MODEL: a run, its delta/ or a registry reference; each must resolve, or the server does not start)."""
    named = named_deltas(deltas_dir)
    if named is not None:
        return {name: _named_delta(name, given) for name, given in named.items()}
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
    named = named_deltas(deltas_dir)
    if named is not None:
        if name not in named:
            raise DeltaError(f"no delta named {name!r} in --deltas {deltas_dir}; the names given there are {sorted(named)}.")
        return _named_delta(name, named[name])
    if is_registry(deltas_dir):
        return _production_delta(deltas_dir, name)
    folder = Path(deltas_dir) / name
    for candidate in (folder, folder / "delta"):
        if (candidate / DELTA_CONFIG).is_file():
            return candidate
    raise DeltaError(f"no delta named {name!r} in {deltas_dir}: expected {folder}/{DELTA_CONFIG} (or {folder}/delta/{DELTA_CONFIG}).")


def delta_source_within(deltas_dir: str | Path, given: str | Path) -> Path:
    """The folder ``given`` (an admin load's ``path``) when it lies inside the ``--deltas`` folder; a server reads no
    other folder, and its refusal names neither the folder nor what is in it."""
    root = Path(deltas_dir)
    if named_deltas(deltas_dir) is not None or not root.is_dir() or is_registry(root):
        raise DeltaError("a path to load is only taken when --deltas is a folder of deltas; load the delta by its name.")
    folder = Path(given).resolve()
    if folder == root.resolve() or not folder.is_relative_to(root.resolve()):
        raise DeltaError("the path given is not inside --deltas; copy the delta folder under --deltas and load it by "
                         "name or by a path inside --deltas.")
    return folder


def load_base(base: str, num_labels: int = 2) -> tuple[type[Task], LoadedModel]:
    """(the task class that runs on the base, the base in eval mode + its processor). A task that adds a head
    (text classification) gives it ``num_labels`` outputs."""
    return load_base_model(resolve_model(base), n_outputs=num_labels)


class DeltaStore:
    """One base, its deltas on their serving paths, and ``run`` for a batch of requests."""

    def __init__(self, base: str):
        self.base = base
        self.task_class, loaded = load_base(base)
        self.model, self.tokenizer = loaded.model, loaded.processor
        # Tried in order: a delta takes the first path with no obstacle to it (grouped takes any).
        self.paths: list[ServingPath] = [MixedPath(self.model), GroupedPath(self._base_copy)]
        self.deltas: dict[str, ServedDelta] = {}  # what the batcher thread serves
        self._fingerprints: dict[frozenset[str], str] = {}
        self.tokenizer_lock = threading.Lock()  # a fast tokenizer must not be called from two threads at once

    def path(self, name: str) -> ServingPath:
        """The serving path called ``name`` (a ``ServedDelta.serving_path``)."""
        return next(p for p in self.paths if p.name == name)

    # ---- loading -------------------------------------------------------------------------------
    def fingerprint(self, exclude: list[str]) -> str:
        # The mixed model's parameters are never written, so its fingerprint per exclude set can be cached.
        key = frozenset(exclude)
        if key not in self._fingerprints:
            self._fingerprints[key] = base_fingerprint(self.model, exclude=key)
        return self._fingerprints[key]

    def prepare_delta(self, name: str, source: str | Path) -> ServedDelta:
        """Read the delta at ``source``, check it belongs to this base and fits its shapes, choose its path and
        make ready what that path needs (a base copy). Any thread; changes nothing served.

        Raises ``DeltaError`` (``DeltaFingerprintMismatch`` for another base) with the reason, for any damage.
        """
        if not DELTA_NAME.match(name):
            raise DeltaError(f"delta name {name!r} is not allowed; use letters, digits, '.', '_' and '-' (up to 128).")
        tensors, config = read_delta(source)  # the tensors are the bytes whose sha256 becomes the version
        selection, task = self._read_config(config, source)
        actual = self.fingerprint([*selection.new_parameters, *selection.inserted_parameters])
        if actual != selection.base_fingerprint:
            raise DeltaFingerprintMismatch(selection.base_fingerprint, actual, str(source))
        problem = delta_shape_problem(self.model, tensors, selection)
        if problem is not None:
            raise DeltaError(f"delta {source}: {problem}")
        delta = ServedDelta(name=name, path=str(source), version=config["weights_sha256"], task=task.limited_to(self.model, self.tokenizer),
                            selection=selection, serving_path="", reason="", tensors=tensors)
        delta.serving_path, delta.reason = self._choose_path(delta)
        self.path(delta.serving_path).prepare(delta)
        return delta

    def _read_config(self, config: dict[str, Any], source: str | Path) -> tuple[Selection, Task]:
        """(selection, task) of a delta's config; a damaged config (missing or mistyped fields) is a ``DeltaError``."""
        try:
            selection = Selection.from_dict(config["selection"])
            meta = config.get("metadata", {}).get("task")
            if not meta:
                raise DeltaError(f"delta {source} has no task metadata (labels, text column); it was not written by "
                                 "`selectune train`, so the server cannot tell what its outputs mean.")
            task = task_from_metadata(meta)
            if not all(isinstance(n, str) for n in [*selection.new_parameters, *selection.inserted_parameters]):
                raise TypeError("new_parameters and inserted_parameters must be lists of names")
        except DeltaError:
            raise
        except Exception as err:  # KeyError, TypeError, AttributeError, ...: the config was not written by selectune
            raise DeltaError(f"delta {source} has a damaged {DELTA_CONFIG} ({type(err).__name__}: {err}); "
                             "re-export it with `selectune train`.") from None
        if not type(task).claims_model_dir(resolve_model(self.base)):
            raise DeltaError(f"delta {source} is a {task.name} delta but the base {self.base} is a {self.task_class.name} model.")
        return selection, task

    def _choose_path(self, delta: ServedDelta) -> tuple[str, str]:
        """(name, reason) of the first path with no obstacle to ``delta``."""
        refusals: list[str] = []
        for path in self.paths:
            obstacle = path.obstacle(delta)
            if obstacle is None:
                return path.name, path.reason(refusals)
            refusals.append(obstacle)
        raise DeltaError(f"delta {delta.path} fits no serving path: {'; '.join(refusals)}")

    def commit(self, delta: ServedDelta) -> None:
        """Serve ``delta``, replacing one of the same name only once the new one is in place. Batcher thread only."""
        old = self.deltas.get(delta.name)
        self.path(delta.serving_path).add(delta)  # replaces ``old`` there if on the same path; raises unchanged
        self.deltas[delta.name] = delta
        if old is not None and old.serving_path != delta.serving_path:
            self.path(old.serving_path).remove(old)

    def commit_new(self, deltas: list[ServedDelta]) -> dict[str, Exception]:
        """``commit`` for deltas of names not yet served (a server's start), each path adding its share at once:
        {name: error} of those refused, the others served."""
        failed: dict[str, Exception] = {}
        for path in self.paths:
            mine = [d for d in deltas if d.serving_path == path.name and d.name not in self.deltas]
            failed.update(path.add_many(mine))
            self.deltas.update((d.name, d) for d in mine if d.name not in failed)
        return failed

    def remove(self, name: str) -> None:
        """Stop serving ``name``. Batcher thread only."""
        delta = self.deltas.pop(name)
        self.path(delta.serving_path).remove(delta)

    def _base_copy(self, n_outputs: int) -> nn.Module:
        """A second copy of the base with ``n_outputs`` outputs (a task without a new head keeps its own), for the grouped path."""
        return load_base(self.base, num_labels=n_outputs)[1].model

    # ---- serving -------------------------------------------------------------------------------
    def run(self, jobs: list[tuple[str, list[dict[str, Any]]] | tuple[str, list[dict[str, Any]], Task | None]],
            on_pass: Callable[[ServingPath, list[ServedDelta], int], None] | None = None,
            ) -> list[tuple[list[dict[str, Any]], ServedDelta]]:
        """Predictions for each job (delta name, encoded examples[, the task that formats its answer, None: the delta's;
        a ``/v1/score`` request's own labels]), in order; each path runs its jobs in as many forward passes as it
        needs (mixed: one for all its deltas; grouped: one per delta).

        Returns, per job, (one prediction per example, the delta that answered). ``on_pass(path, the pass's
        deltas, its number of examples)`` is called after each forward pass (metrics).
        """
        results: list[Any] = [None] * len(jobs)
        for path, indices in self._passes(jobs):
            examples = [e for i in indices for e in jobs[i][1]]
            per_example = [self.deltas[jobs[i][0]] for i in indices for _ in jobs[i][1]]
            logits, model = path.forward(per_example, self._collate(examples), run=self.task_class.forward_request)
            self._split(jobs, indices, logits, model, results)
            if on_pass is not None:
                on_pass(path, [self.deltas[jobs[i][0]] for i in indices], len(examples))
        return results

    def generate(self, jobs: list[tuple[str, list[dict[str, Any]]]],
                 on_pass: Callable[[ServingPath, list[ServedDelta], int], None] | None = None,
                 ) -> list[tuple[list[Generation], ServedDelta]]:
        """Greedy generations for each job (delta name, examples of ``Task.encode_generation``), in order: the jobs of
        one pass (``_passes``: every mixed delta together) decode in one batch, one forward per step for all of them."""
        results: list[Any] = [None] * len(jobs)
        for path, indices in self._passes(jobs):
            examples = [e for i in indices for e in jobs[i][1]]
            per_example = [self.deltas[jobs[i][0]] for i in indices for _ in jobs[i][1]]
            with path.bound(per_example) as bound:
                generations = greedy_decode(bound, [e["prompt_ids"] for e in examples], [e["max_new_tokens"] for e in examples],
                                            [e["stop_ids"] for e in examples], examples[0]["pad_id"])
            for i in indices:
                n = len(jobs[i][1])
                results[i], generations = (generations[:n], self.deltas[jobs[i][0]]), generations[n:]
            if on_pass is not None:
                on_pass(path, [self.deltas[jobs[i][0]] for i in indices], len(examples))
        return results

    def _passes(self, jobs: list[tuple]) -> Iterator[tuple[ServingPath, list[int]]]:
        """(path, the indices of the jobs one pass runs) for every pass ``jobs`` (delta name first) need, in run order."""
        for path in self.paths:
            mine = [i for i, job in enumerate(jobs) if self.deltas[job[0]].serving_path == path.name]
            if not mine:
                continue
            for group in path.passes([self.deltas[jobs[i][0]] for i in mine]):
                yield path, [mine[g] for g in group]

    def _collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        with self.tokenizer_lock:
            return collate(self.task_class, self.tokenizer, examples)

    def _split(self, jobs, indices: list[int], logits: torch.Tensor, model: nn.Module, results: list) -> None:
        start = 0
        for i in indices:
            name, examples, *asked = jobs[i]
            delta = self.deltas[name]
            task = asked[0] if asked and asked[0] is not None else delta.task
            part = logits[start:start + len(examples), : task.n_outputs].float()  # (n, C) of this delta's head
            start += len(examples)
            results[i] = (format_predictions(task, model, part), delta)


def format_predictions(task: Task, model: nn.Module, logits: torch.Tensor) -> list[dict[str, Any]]:
    """(n, C) logits -> one answer per example, as the task formats it (e.g. {label, probabilities} or {value})."""
    return task.format_outputs(model, logits)
