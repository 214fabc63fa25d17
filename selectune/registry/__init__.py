"""Versions of a model with lineage and evidence, promote/rollback of the ``production`` alias, crash-safe.

One SQLite file plus content-addressed folders (``store.py``); registering runs, deltas and base models
(``register.py``); continual updates from a version (``update.py``); the CLI (``commands.py``).

For a server: ``resolve(registry_dir, "name@production")`` is the delta folder to load (checked against
its recorded hashes), and ``resolve_version`` also gives the base model it applies to.
"""
from __future__ import annotations

import os
from pathlib import Path

from selectune.registry.store import (PRODUCTION, Registry, RegistryError, RegistryIntegrityError, Version, parse_ref)


def resolve_version(registry_dir: str | os.PathLike, ref: str) -> tuple[Version, Path, str]:
    """(version, delta folder, base model) for ``name@production``, ``name@3``, ``name@latest`` or ``name``.

    The delta's files are checked against the hashes recorded at registration; a changed file raises
    ``RegistryIntegrityError``. The base is a bundled name (``minilm``) or a folder path.
    """
    with Registry(registry_dir) as registry:
        version = registry.get(ref)
        return version, registry.delta_path(version), registry.base_path(version)


def resolve(registry_dir: str | os.PathLike, ref: str) -> Path:
    """The verified delta folder of ``ref`` (e.g. ``"diabetes-risk@production"``)."""
    return resolve_version(registry_dir, ref)[1]


__all__ = ["PRODUCTION", "Registry", "RegistryError", "RegistryIntegrityError", "Version", "parse_ref", "resolve", "resolve_version"]
