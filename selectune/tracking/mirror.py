"""Mirror a registry name into an MLflow Model Registry: one registered model per name, one MLflow model version per
registry version, the alias ``production`` where the registry's production alias is.

The embedded registry stays the record; the mirror follows it. ``mirror_name`` is idempotent: versions already
mirrored (found by their ``selectune.version`` tag) are left alone, new ones are added in order, and the alias is
set to the production version (or removed when the registry has none). So ``registry add``, ``promote``,
``rollback`` and ``update`` with ``--mlflow-uri`` mirror after their own change, and ``registry mirror`` catches up
a registry that was used without it.

Each MLflow model version's source is the delta folder, logged as the artifacts of a run named ``NAME@V`` (with the
registry record as ``registry_version.json``), and its tags hold the lineage and identity: version, parent, base
model and fingerprint, delta hashes, method and the gate outcome.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from selectune.registry.store import PRODUCTION, Registry, Version
from selectune.tracking.mlflow_client import RunLog, connect, experiment_id, log_with, quoted, reporting
from selectune.tracking.logs import with_ci

VERSION_TAG = "selectune.version"


def version_tags(reg: Registry, version: Version) -> dict[str, str]:
    """The identity and lineage of a registry version, as MLflow model version tags."""
    gate = {None: "none", True: "passed", False: "failed"}[version.gate_passed]
    return {VERSION_TAG: str(version.version), "selectune.parent": str(version.parent or ""), "selectune.ref": version.ref,
            "selectune.registry": str(reg.root.resolve()), "selectune.base_model": version.base_model,
            "selectune.base_fingerprint": version.base_fingerprint, "selectune.delta_weights_sha256": version.weights_sha256,
            "selectune.delta_config_sha256": "sha256:" + version.delta_id, "selectune.method": str(version.record.get("method")),
            "selectune.gate": gate}


def _mirror_version(client: Any, experiment: str, reg: Registry, version: Version) -> str:
    """A run holding the version's delta (checked against its registered hashes) and record; a model version on it."""
    delta = reg.delta_path(version)
    tags = version_tags(reg, version)
    with tempfile.TemporaryDirectory(prefix="selectune-mirror-") as scratch:
        record = Path(scratch) / "registry_version.json"
        record.write_text(json.dumps(version.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
        metrics = with_ci((version.record.get("metrics") or {}).get("test") or {})
        log = RunLog(name=version.ref, params={"method": version.record.get("method"), "options": version.record.get("options")},
                     metrics={**metrics, "gate_passed": version.gate_passed}, tags={**tags, "selectune.command": "registry mirror"},
                     artifacts=[("delta", delta), ("", record)])
        run_id = log_with(client, experiment, log)
    source = f"{client.get_run(run_id).info.artifact_uri}/delta"
    created = client.create_model_version(version.name, source=source, run_id=run_id, tags=tags,
                                          description=version.record.get("note") or None)
    return str(created.version)


def mirror_name(reg: Registry, name: str, uri: str, experiment: str) -> dict[str, Any]:
    """Bring NAME's MLflow registered model up to the registry: missing versions added, ``production`` where it is here."""
    versions = reg.versions(name)  # an unknown name fails here, before MLflow is touched
    production = reg.alias(name, PRODUCTION)
    client = connect(uri)
    with reporting(f"the registry change is recorded in {reg.root}; mirroring {name} to MLflow at {uri} failed (rerun "
                   f"`selectune registry mirror {name} --registry {reg.root} --mlflow-uri {uri}`)"):
        if not client.search_registered_models(filter_string=f"name = '{quoted(name)}'"):
            client.create_registered_model(name, tags={"selectune.registry": str(reg.root.resolve())},
                                           description=f"mirrored from the selectune registry {reg.root.resolve()}")
        mirrored = {v.tags.get(VERSION_TAG): str(v.version) for v in client.search_model_versions(f"name = '{quoted(name)}'")}
        added = []
        for version in versions:
            if str(version.version) not in mirrored:
                mirrored[str(version.version)] = _mirror_version(client, experiment_id(client, experiment), reg, version)
                added.append(version.version)
        aliases = client.get_registered_model(name).aliases
        if production is not None:
            client.set_registered_model_alias(name, PRODUCTION, mirrored[str(production)])
        elif PRODUCTION in aliases:
            client.delete_registered_model_alias(name, PRODUCTION)
    return {"registered_model": name, "mlflow_uri": uri, "added": added,
            "versions": {int(k): int(v) for k, v in mirrored.items() if k is not None},
            "production": int(mirrored[str(production)]) if production is not None else None}
