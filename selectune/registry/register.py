"""Registering a version: from a training run, a delta or a model folder to a row in the registry.

Every version is one delta on one base model, so every version loads the same way (base + delta) and a
server of many deltas on one base can serve any of them. A base model registered as a version (the MLP
trained on earlier data) is copied into the registry and given an *empty* delta against itself.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch.nn as nn

from selectune.delta import DELTA_CONFIG, read_delta, save_delta
from selectune.evaluate.records import GateRecord, parse_record
from selectune.fingerprint import base_fingerprint, file_sha256
from selectune.models import BUNDLED_MODELS, DERIVED_MODELS, TASK_FILE, load_with_delta, resolve_model
from selectune.refs import resolve_trained_model
from selectune.registry.store import IN_REGISTRY, Registry, RegistryError, Version
from selectune.selection import Selection
from selectune.tasks import ModelLoadError, Task, task_from_metadata

BASE_METHOD = "base"  # the method recorded for a base model registered as a version (its delta is empty)


def locate(path: str) -> tuple[str, Path, Path | None]:
    """(kind, folder, run folder): kind "delta" (a delta folder, from a run folder or given directly) or "model"
    (a selectune model folder: `merge` or `train --save-model` output), as ``selectune.refs`` names them."""
    folder = Path(path)
    if not folder.exists():
        raise RegistryError(f"{path} not found; give a `selectune train --out` folder, its delta/ folder, or a model folder")
    try:
        trained = resolve_trained_model(path, option="path") if folder.is_dir() else None
    except ModelLoadError:
        trained = None
    if trained is not None and trained.delta:
        return "delta", Path(trained.delta), trained.run_dir
    if trained is not None and (folder / "config.json").is_file():
        return "model", folder, trained.run_dir
    found = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else []
    raise RegistryError(f"{path} is neither a training run (delta/ inside), a delta ({DELTA_CONFIG}) nor a selectune model folder "
                        f"(config.json + {TASK_FILE}); it has {found}")


def read_gate(path: str | None) -> tuple[bool | None, dict[str, Any] | None]:
    """(passed, record) from the gate.json written by `selectune gate` (or its output folder)."""
    if path is None:
        return None, None
    file = Path(path) / "gate.json" if Path(path).is_dir() else Path(path)
    try:
        gate = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise RegistryError(f"cannot read the gate result {file}: {err}; give the gate.json written by `selectune gate --out`") from None
    if not isinstance(gate, dict) or not isinstance(gate.get("passed"), bool):
        raise RegistryError(f"{file} has no boolean 'passed'; give the gate.json written by `selectune gate --out`")
    record = parse_record(GateRecord, gate, file, RegistryError, "give the gate.json written by `selectune gate --out`")
    return record.passed, {"passed": record.passed, "criteria_sha256": record.criteria.sha256, "criteria_path": record.criteria.path,
                           "file": str(file.resolve()), "file_sha256": file_sha256(file),
                           "base": record.base.dump(), "update": record.update.dump(),
                           "rows": [{"id": r.id, "passed": r.passed, "evidence": r.evidence} for r in record.rows]}


def run_evidence(run: Path | None) -> dict[str, Any]:
    """Test metrics and data fingerprints from the training run folder, when there is one."""
    if run is None:
        return {}
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    config = json.loads((run / "run_config.json").read_text()) if (run / "run_config.json").is_file() else {}
    return {"run": str(run.resolve()), "data": config.get("data_files", {}), "split_protocol": metrics.get("split_protocol"),
            "metrics": {k: metrics.get(k) for k in ("test", "majority_baseline", "best_validation", "best_epoch") if metrics.get(k) is not None},
            "trained_parameters": metrics.get("trainable_parameters"), "train_command": config.get("argv")}


def _base_reference(registry: Registry, base: str) -> str:
    """The base as the registry records it: a bundled name, ``@registry/...`` inside it, else an absolute path."""
    if base in BUNDLED_MODELS or base in DERIVED_MODELS:
        return base
    path = Path(base).resolve()
    if not path.exists():
        raise RegistryError(f"the delta's base model {base} is not found from {Path.cwd()}; run from the folder it was trained in")
    if path.is_relative_to(registry.root):
        return IN_REGISTRY + path.relative_to(registry.root).as_posix()
    return str(path)


def check_request(path: str, name: str, gate: str | None) -> tuple[str, Path, Path | None, bool | None, dict[str, Any] | None]:
    """Everything about a registration that can be refused before the registry is touched."""
    if not name or any(c in name for c in "@/ \\") or name.startswith("."):
        raise RegistryError(f"model name {name!r} must be non-empty without '@', '/', spaces or a leading dot, e.g. diabetes-risk")
    return (*locate(path), *read_gate(gate))


def register(registry: Registry, path: str, name: str, *, parent: int | None = None, gate: str | None = None,
             note: str | None = None, extra: dict[str, Any] | None = None) -> Version:
    """Store PATH's delta (or model) in the registry and add it as the next version of NAME.

    Every check (hashes, the gate's binding, loading the base with the delta) runs before the registry's write lock
    is taken: another writer never waits while a base model loads.
    """
    kind, folder, run, gate_passed, gate_record = check_request(path, name, gate)
    evidence = run_evidence(run)
    checked = _check_delta(registry, folder) if kind == "delta" else _load_model(folder)
    check_gate_binding(kind, folder, run, gate_record, path)
    with registry.writing():
        if kind == "delta":
            delta, stored_base, record = checked
        else:
            delta, stored_base, record = _model_as_version(registry, folder, checked, evidence.get("data", {}))
        delta_id, weights = registry.store_delta(delta)
        if kind == "model":
            shutil.rmtree(delta)  # the empty delta staged for it was copied in
        # Data files and hashes: the delta's own record, else the training run's.
        record = {"source": str(Path(path).resolve()), "note": note, "gate": gate_record, **evidence, **record,
                  "data": record["data"] or evidence.get("data", {}), **(extra or {})}
        return registry.insert_version(name, parent=parent, delta_id=delta_id, weights_sha256=weights, base_model=stored_base,
                                       base_fingerprint=record.pop("base_fingerprint"), gate_passed=gate_passed, record=record)


def check_gate_binding(kind: str, folder: Path, run: Path | None, gate_record: dict[str, Any] | None, path: str) -> None:
    """Refuse a gate result that does not name the update being registered: a gate binds to the sha256 of the delta
    it judged (or, for a model folder, of the model's files), so a gate.json written by hand, or one of another
    update, never attaches to a version."""
    if gate_record is None:
        return
    judged = gate_record.get("update") or {}
    named, files = judged.get("delta_weights_sha256"), judged.get("weights_sha256") or {}
    if kind == "delta":
        expected = {read_delta(folder)[1]["weights_sha256"]}
    else:  # a model folder: the delta of the run that wrote it, or the model's own weight files
        run_delta = run / "delta" if run is not None else None
        expected = {read_delta(run_delta)[1]["weights_sha256"]} if run_delta is not None and (run_delta / DELTA_CONFIG).is_file() else set()
        if files and all((folder / f).is_file() and file_sha256(folder / f) == sha for f, sha in files.items()):
            return
    if not named and not files:
        raise RegistryError(f"the gate result {gate_record['file']} names no delta it judged (update.delta_weights_sha256); a gate "
                            f"binds to the sha256 of the update it judged: give the gate.json `selectune gate --update {path}` wrote")
    if named not in expected:
        raise RegistryError(f"the gate result {gate_record['file']} judged another update (delta {named or files}), not {path}; "
                            "give the gate.json of this update")


def _check_delta(registry: Registry, folder: Path) -> tuple[Path, str, dict[str, Any]]:
    """Verify a delta end to end: hashes, task metadata, and that it applies to its base (fingerprint)."""
    _, config = read_delta(folder)
    meta = config.get("metadata", {})
    if "task" not in meta:
        raise RegistryError(f"delta {folder} has no task metadata; register deltas written by `selectune train`")
    if meta.get("base_model") == "mlp":
        raise RegistryError(f"delta {folder} trained a new MLP from scratch, so its base is the model/ folder beside it; "
                            f"register that model as the first version instead: selectune registry add {folder.parent / 'model'} --name NAME")
    stored_base = _base_reference(registry, meta["base_model"])
    base_path = registry.base_path_of(stored_base)
    load_with_delta(str(folder), base_path)  # refuses a base with another fingerprint, a damaged delta, wrong shapes
    selection = config["selection"]
    return folder, stored_base, {"kind": "delta", "method": selection["method"], "method_options": selection["options"],
                                 "task": meta["task"], "base_fingerprint": selection["base_fingerprint"],
                                 "delta_parameters": selection["trainable_parameters"], "total_parameters": selection["total_parameters"],
                                 "delta_bytes": (folder / "delta.safetensors").stat().st_size,
                                 "init_delta": meta.get("init_delta"), "data": meta.get("data_files") or {}}


def _load_model(folder: Path) -> tuple[Task, nn.Module, str]:
    """(task, model, fingerprint) of a selectune model folder, loaded from where it is (before the registry lock)."""
    task = task_from_metadata(json.loads((folder / TASK_FILE).read_text()))
    loaded = task.load_model(resolve_model(str(folder)))
    if loaded.new_parameters:
        raise RegistryError(f"{folder} lacks trained values for {loaded.new_parameters[:3]}; register a model folder written by "
                            "`selectune train --save-model` or `selectune merge`")
    return task, loaded.model, base_fingerprint(loaded.model)


def _model_as_version(registry: Registry, folder: Path, loaded: tuple[Task, nn.Module, str], data: dict) -> tuple[Path, str, dict[str, Any]]:
    """Copy a model folder into the registry and write an empty delta against it (staged; caller stores it). Caller
    holds the lock; ``loaded`` is ``_load_model(folder)`` (the copy has the same files, so the same fingerprint)."""
    task, net, fingerprint = loaded
    stored_base = registry.store_model(folder)
    base_path = registry.base_path_of(stored_base)
    nothing = Selection(method=BASE_METHOD, options={}, trainable=[], new_parameters=[], base_fingerprint=fingerprint, roles={},
                        total_parameters=sum(p.numel() for p in net.parameters()), trainable_parameters=0)
    staged = registry.staging()
    save_delta(net, nothing, staged, metadata={"task": task.metadata(), "base_model": base_path, "model_class": type(net).__name__,
                                               "data_files": data})
    return staged, stored_base, {"kind": "model", "method": BASE_METHOD, "method_options": {}, "task": task.metadata(),
                                 "base_fingerprint": fingerprint, "delta_parameters": 0, "total_parameters": nothing.total_parameters,
                                 "delta_bytes": 0, "data": data, "model_files": sorted(p.name for p in folder.iterdir() if p.is_file())}
