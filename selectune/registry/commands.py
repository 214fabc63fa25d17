"""``selectune registry add | promote | rollback | history | show | export | verify | mirror``: thin over the store.

With ``--mlflow-uri``, ``add``, ``promote`` and ``rollback`` mirror the name into that MLflow Model Registry after
their own change (``selectune.tracking.mirror``); ``mirror`` catches up a name registered without it."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from selectune.delta import DELTA_CONFIG, DELTA_WEIGHTS
from selectune.io import atomic_write_json, check_owned, staged_folder
from selectune.registry.register import check_request, register
from selectune.registry.store import PRODUCTION, Registry, Version
from selectune.text_table import table
from selectune.config import TrackingConfig
from selectune.tracking import check as check_tracking
from selectune.tracking.mirror import mirror_name

EXPORT_OWNER = "selectune registry export"


def add(path: str, *, name: str, registry: str = "registry", parent: int | None = None, gate: str | None = None,
        note: str | None = None, tracking: TrackingConfig = TrackingConfig()) -> dict[str, Any]:
    """Register a training run, a delta, or a base model folder as the next version of NAME.

    path: a `selectune train --out` folder, its delta/ folder, or a model folder (e.g. RUN/model of a base trained from scratch)
    name: model name, e.g. diabetes-risk
    registry: registry folder (created if missing)
    parent: the version this one was trained from (lineage), e.g. 3
    gate: gate.json written by `selectune gate --out` (pass/fail and the criteria's sha256 are recorded)
    note: free text recorded with the version
    """
    check_request(path, name, gate)  # a bad request must not leave a new, empty registry behind
    check_tracking(tracking)
    with Registry(registry, create=True) as reg:
        version = register(reg, path, name, parent=parent, gate=gate, note=note)
        return _mirrored(reg, name, tracking, _summary(reg, version))


def promote(ref: str, *, registry: str = "registry", override: str | None = None, tracking: TrackingConfig = TrackingConfig()) -> dict[str, Any]:
    """Move NAME's production alias to a version; refused if its gate failed, unless --override "REASON" (recorded).

    ref: NAME@VERSION
    registry: registry folder
    override: promote although the gate failed; the reason is recorded in the history
    """
    check_tracking(tracking)
    with Registry(registry) as reg:
        version = reg.promote(ref, override=override)
        return _mirrored(reg, version.name, tracking, _summary(reg, version))


def rollback(name: str, *, registry: str = "registry", reason: str | None = None, tracking: TrackingConfig = TrackingConfig()) -> dict[str, Any]:
    """Move NAME's production alias back to the version that was in production before the current one.

    name: model name
    registry: registry folder
    reason: why (recorded in the history)
    """
    check_tracking(tracking)
    with Registry(registry) as reg:
        version = reg.rollback(name, reason=reason)
        return _mirrored(reg, name, tracking, _summary(reg, version))


def mirror(name: str, *, mlflow_uri: str, registry: str = "registry", mlflow_experiment: str = "selectune") -> dict[str, Any]:
    """Mirror NAME into an MLflow Model Registry: one MLflow version per version (the delta as its artifacts, lineage,
    fingerprint and gate outcome as tags), alias production where it is here. Idempotent: run it again any time.

    name: model name
    mlflow_uri: the MLflow tracking server, e.g. http://127.0.0.1:5000 (needs pip install 'selectune[mlflow]')
    registry: registry folder
    mlflow_experiment: MLflow experiment of the runs that hold each version's delta
    """
    check_tracking(TrackingConfig(mlflow_uri=mlflow_uri))
    with Registry(registry) as reg:
        return mirror_name(reg, name, mlflow_uri, mlflow_experiment)


def _mirrored(reg: Registry, name: str, tracking: TrackingConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """With --mlflow-uri: NAME mirrored into the MLflow Model Registry after the registry's own change."""
    if not tracking.mlflow_uri:
        return summary
    return {**summary, "mlflow_model": mirror_name(reg, name, tracking.mlflow_uri, tracking.mlflow_experiment)}


def show(ref: str, *, registry: str = "registry") -> dict[str, Any]:
    """Everything recorded about one version: lineage, base and its fingerprint, data hashes, metrics, gate, who/when/command.

    ref: NAME@VERSION, NAME@production or NAME@latest
    registry: registry folder
    """
    with Registry(registry) as reg:
        version = reg.get(ref)
        return {**version.to_dict(), "delta_path": str(reg.delta_path(version)), "base_path": reg.base_path(version),
                "aliases": [a for a in (PRODUCTION,) if reg.alias(version.name, a) == version.version],
                "children": [v.version for v in reg.versions(version.name) if v.parent == version.version]}


def export(ref: str, out: str, *, registry: str = "registry", overwrite: bool = False) -> str:
    """Copy a version's delta (checked against its recorded hashes) to OUT, with its registry record beside it.

    ref: NAME@VERSION or NAME@production
    out: output folder: delta.safetensors + delta_config.json (a delta `selectune evaluate --delta` reads) + registry_version.json
    registry: registry folder
    overwrite: replace OUT if it exists
    """
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another folder or pass --overwrite")
    check_owned(target, EXPORT_OWNER)  # --overwrite replaces only an earlier export, never e.g. the registry itself
    with Registry(registry) as reg:
        version = reg.get(ref)
        source, base = reg.delta_path(version), reg.base_path(version)
        with staged_folder(target, owner=EXPORT_OWNER) as partial:
            for name in (DELTA_WEIGHTS, DELTA_CONFIG):
                shutil.copyfile(source / name, partial / name)
            reg.check_delta(partial, version.delta_id, version.weights_sha256, version.ref)  # the copy is the registered bytes
            atomic_write_json(partial / "registry_version.json", {**version.to_dict(), "base_path": base, "registry": str(reg.root)})
    return str(target)


def verify(*, registry: str = "registry") -> dict[str, Any]:
    """Check every registered file against its recorded hash and every alias and parent; exit 1 on a problem.

    registry: registry folder
    """
    with Registry(registry) as reg:
        problems = reg.verify()
        counted = {name: len(reg.versions(name)) for name in reg.names()}
    return {"registry": str(Path(registry).resolve()), "versions": counted, "problems": problems}


def history(name: str, *, registry: str = "registry") -> dict[str, Any]:
    """NAME's versions as a table and a lineage tree, with each version's test metrics and gate result, and the
    promote/rollback events.

    name: model name
    registry: registry folder
    """
    with Registry(registry) as reg:
        versions = reg.versions(name)
        return {"name": name, "registry": str(reg.root), "production": reg.alias(name, PRODUCTION),
                "versions": [v.to_dict() for v in versions], "events": reg.events(name)}


def _summary(reg: Registry, version: Version) -> dict[str, Any]:
    return {"version": version.ref, "parent": version.parent, "method": version.record.get("method"),
            "gate_passed": version.gate_passed, "production": reg.alias(version.name, PRODUCTION), "registry": str(reg.root)}


# ---- text output -------------------------------------------------------------------------------
def gate_text(version: dict[str, Any], events: list[dict[str, Any]]) -> str:
    passed = version["gate_passed"]
    failed = [r["id"] for r in ((version["record"].get("gate") or {}).get("rows") or []) if not r.get("passed")]
    text = "-" if passed is None else "PASS" if passed else "FAIL" + (f" [{', '.join(failed)}]" if failed else "")
    overrides = [e for e in events if e["action"] == "promote" and e["version"] == version["version"] and e["reason"]]
    return text + (" (override)" if overrides and passed is False else "")


def metric_text(version: dict[str, Any]) -> tuple[str, str]:
    """(the version's own test metric, the same metric for its parent on the same rows) as text."""
    record = version["record"]
    test = (record.get("metrics") or {}).get("test") or {}
    parent = (record.get("update") or {}).get("parent_test_metrics") or {}
    key = next((k for k in ("auroc", "accuracy", "r2", "rmse") if test.get(k) is not None), None)
    if key is None:
        return "-", "-"
    return f"{key} {test[key]:.3f}", f"{parent[key]:.3f}" if parent.get(key) is not None else "-"


def render_history(result: dict[str, Any]) -> str:
    versions, events, production = result["versions"], result["events"], result["production"]
    rows = []
    for v in versions:
        record = v["record"]
        own, parent = metric_text(v)
        data = (record.get("update") or {}).get("data") or (record.get("data") or {}).get("train") or {}
        rows.append({"version": f"v{v['version']}", "parent": f"v{v['parent']}" if v["parent"] else "-", "method": record.get("method", "?"),
                     "delta params": record.get("delta_parameters", "?"), "data": Path(data["path"]).name if "path" in data else "-",
                     "test": own, "parent, same rows": parent, "gate": gate_text(v, events),
                     "created": record.get("created_at", "")[:19].replace("T", " "),
                     "": "<- production" if v["version"] == production else ""})
    lines = [f"{result['name']} in {result['registry']}: {len(versions)} version(s), production "
             + (f"v{production}" if production else "not set"), "",
             table(rows, ["version", "parent", "method", "delta params", "data", "test", "parent, same rows", "gate", "created", ""]),
             "", "lineage:"]
    children: dict[int | None, list[dict]] = {}
    for v in versions:
        children.setdefault(v["parent"], []).append(v)

    def walk(v: dict[str, Any], prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└── " if last else "├── ")
        label = f"v{v['version']} {v['record'].get('method', '?')}  gate {gate_text(v, events)}"
        lines.append(prefix + branch + label + ("  [production]" if v["version"] == production else ""))
        below = children.get(v["version"], [])
        for i, child in enumerate(below):
            walk(child, prefix + ("" if root else ("    " if last else "│   ")), i == len(below) - 1, False)

    for v in children.get(None, []):
        walk(v, "", True, True)
    if events:
        lines += ["", "events:"]
        for e in events:
            what = (f"promote v{e['version']}" + (f" (replacing v{e['previous']})" if e["previous"] else "")
                    if e["action"] == "promote" else f"rollback to v{e['version']} (from v{e['previous']})")
            reason = f"  override: {e['reason']}" if e["action"] == "promote" and e["reason"] else (f"  reason: {e['reason']}" if e["reason"] else "")
            lines.append(f"  {e['at'][:19].replace('T', ' ')}  {e['actor']}  {what}{reason}")
    return "\n".join(lines)


def render_summary(result: dict[str, Any]) -> str:
    gate = {None: "no gate recorded", True: "gate passed", False: "gate FAILED"}[result["gate_passed"]]
    production = f"v{result['production']}" if result["production"] else "not set"
    return f"{result['version']} ({result['method']}, {gate}); production: {production}"


def render_verify(result: dict[str, Any]) -> str:
    counted = ", ".join(f"{n}: {c}" for n, c in result["versions"].items()) or "empty"
    if not result["problems"]:
        return f"{result['registry']}: every file matches its recorded hash ({counted})"
    return "\n".join([f"{result['registry']}: {len(result['problems'])} problem(s)", *(f"  {p}" for p in result["problems"])])
