"""One way to name a trained model, for every verb that takes one.

A user may hand ``evaluate``, ``predict``, ``merge``, ``gate``, ``report``, ``serve`` or ``update`` any of:

* a ``selectune train --out`` folder (``delta/`` inside, ``run_config.json`` / ``metrics.json`` beside it),
* that run's ``delta/`` folder (or any folder holding ``delta_config.json``),
* a folder written by ``selectune merge`` (``selectune_task.json`` beside plain weights), or
* a registry reference ``NAME@VERSION``, ``NAME@production`` or ``NAME@latest``: bare, it is looked up in the
  registry folder ``./registry`` (the default of every ``--registry``); ``REGISTRY_DIR/NAME@VERSION`` names another.

``resolve_trained_model`` turns that string into a ``TrainedModel``: which files hold the weights, which base to load
them on, and which training run (if any) left its records. It reads and checks nothing heavier than JSON; loading is
``selectune.models.load_trained``'s.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectune.delta import DELTA_CONFIG, read_delta
from selectune.registry.store import Registry
from selectune.tasks import ModelLoadError

TASK_FILE = "selectune_task.json"  # beside a merged model's weights: the task it answers
MERGE_RECORD = "selectune_merge.json"  # beside a merged model's weights: the delta (and run) it came from
DEFAULT_REGISTRY = "registry"
# NAME@3, NAME@production, NAME@latest: the last path component of a registry reference.
REGISTRY_REF = re.compile(r"^(?P<name>[A-Za-z0-9][^@/\\\s]*)@(?P<which>\d+|[A-Za-z_][A-Za-z0-9_]*)$")
FORMS = ("run", "delta", "merged", "registry")


@dataclass(frozen=True)
class TrainedModel:
    """A trained model as the user named it, with the files that hold it."""
    given: str
    form: str
    """``run``, ``delta``, ``merged`` or ``registry``."""
    delta: str | None
    """Delta folder (``delta_config.json`` + ``delta.safetensors``); None for a merged model."""
    merged: str | None
    """Merged model folder; None unless ``form == "merged"``."""
    base: str | None = None
    """Base model to load the delta on instead of the one the delta records (a registry keeps its own copy)."""
    run_dir: Path | None = None
    """The training run folder (``run_config.json``, ``metrics.json``), when known."""
    registry_ref: str | None = None
    """``NAME@VERSION`` with the version number, for a registry reference."""

    @property
    def folder(self) -> str:
        """The folder that holds the weights: the delta's, or the merged model's."""
        return self.delta or self.merged  # type: ignore[return-value]

    def task_metadata(self) -> dict[str, Any]:
        """The task as recorded beside the weights (delta config or merged folder's task file)."""
        if self.delta:
            config = json.loads((Path(self.delta) / DELTA_CONFIG).read_text())
            task = config.get("metadata", {}).get("task")
            if task is None:
                raise ModelLoadError(f"{self.delta} has no task metadata; it was not written by `selectune train`.")
            return task
        return json.loads((Path(self.merged) / TASK_FILE).read_text())


def _run_beside(folder: Path) -> Path | None:
    return folder if (folder / "run_config.json").is_file() or (folder / "metrics.json").is_file() else None


def _from_folder(given: str, folder: Path) -> TrainedModel | None:
    if (folder / "delta" / DELTA_CONFIG).is_file():
        return TrainedModel(given, "run", str(folder / "delta"), None, run_dir=folder)
    if (folder / DELTA_CONFIG).is_file():
        return TrainedModel(given, "delta", str(folder), None, run_dir=_run_beside(folder.parent))
    if (folder / TASK_FILE).is_file():
        # A merged folder records the delta it came from (and the run, when known); a model/ folder that
        # `train --save-model` wrote sits inside its run.
        record = json.loads((folder / MERGE_RECORD).read_text()) if (folder / MERGE_RECORD).is_file() else {}
        origin = Path(record["run"]) if record.get("run") else Path(record["delta"]).parent if record.get("delta") else folder.parent
        return TrainedModel(given, "merged", None, str(folder), run_dir=_run_beside(origin))
    return None


def registry_reference(given: str, registry: str = DEFAULT_REGISTRY) -> tuple[str, str] | None:
    """``REGISTRY_DIR/NAME@VERSION`` -> (REGISTRY_DIR, ``NAME@VERSION``); a bare ``NAME@VERSION`` -> (REGISTRY, it);
    None when GIVEN is not shaped like a registry reference (or is an existing path)."""
    path = Path(given)
    match = REGISTRY_REF.match(path.name)
    if not match or path.exists():
        return None
    return (str(path.parent) if str(path.parent) not in ("", ".") else registry), path.name


def _from_registry(given: str, registry_dir: str, ref: str) -> TrainedModel:
    with Registry(registry_dir) as registry:
        version = registry.get(ref)
        delta = registry.delta_path(version)  # checks both files against the hashes recorded at registration
        base = registry.base_path(version)
    run = version.record.get("run")
    return TrainedModel(given, "registry", str(delta), None, base=base, run_dir=_run_beside(Path(run)) if run else None,
                        registry_ref=version.ref)


def resolve_trained_model(given: str, *, option: str = "model") -> TrainedModel:
    """Resolve what the user gave as ``--OPTION`` (a run, delta or merged folder, or NAME@VERSION) to its files.

    Refuses, naming the option and what would work: a missing path, a folder that holds none of the three, and a
    registry reference to a registry, name or version that does not exist."""
    path = Path(given)
    if path.is_file():
        read_delta(path)  # a delta's weights file stands for its folder; anything else (a pickle) is refused unopened
        path = path.parent
    if path.is_dir():
        found = _from_folder(given, path)
        if found is not None:
            return found
        listing = sorted(p.name for p in path.iterdir())[:10]
        raise ModelLoadError(f"--{option} {given} is neither a training run (delta/ inside), a delta ({DELTA_CONFIG}) nor a "
                             f"merged model ({TASK_FILE}); it has {listing}. Give a `selectune train --out` folder, its delta/, "
                             "a `selectune merge` folder, or a registry reference NAME@VERSION.")
    reference = registry_reference(given)
    if reference is not None:
        return _from_registry(given, *reference)
    raise ModelLoadError(f"--{option} {given}: model or delta not found; give a `selectune train --out` folder, its delta/ folder, a folder "
                         f"written by `selectune merge`, or a registry reference NAME@VERSION (looked up in ./{DEFAULT_REGISTRY}, "
                         "or REGISTRY_DIR/NAME@VERSION).")
