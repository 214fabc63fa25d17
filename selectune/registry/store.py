"""The registry's storage: one SQLite file for versions, aliases and events, and content-addressed
folders for the files they point at. No server.

    REGISTRY/
      registry.sqlite     versions (lineage, evidence), aliases (``production``), events (promote, rollback)
      deltas/<hex>/       delta.safetensors + delta_config.json; <hex> is the sha256 of the config, which
                          records the sha256 of the weights, so one name covers both files
      models/<hex>/       base models registered as versions (e.g. a tabular MLP trained on earlier data);
                          <hex> is the sha256 over the folder's file names and hashes
      staging/            files being written; nothing refers to it; emptied by the next writer
      write.lock          one writer at a time (flock; the kernel releases it when a writer dies)

Crash safety: files are staged, fsynced, renamed into their content-addressed place and the folder
fsynced *before* the SQLite transaction that refers to them commits, and SQLite (WAL,
synchronous=FULL) makes that commit atomic and durable. A writer killed at any instant leaves the old
state or the new one, plus at most an unreferenced folder. Every read checks the hashes: a delta whose
bytes changed after it was registered is refused.
"""
from __future__ import annotations

import dataclasses
import fcntl
import getpass
import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from selectune.delta import DELTA_CONFIG, DELTA_WEIGHTS, DeltaError
from selectune.fingerprint import file_sha256
from selectune.io import replace_folder

DATABASE, LOCK = "registry.sqlite", "write.lock"
LOCK_TIMEOUT_S = 120.0  # a registration holds the lock only to copy files and insert a row
PRODUCTION = "production"
IN_REGISTRY = "@registry/"  # prefix of a base model path stored inside the registry (relative, so the folder can move)
SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, parent INTEGER,
    delta_id TEXT NOT NULL,          -- deltas/<delta_id>/: sha256 of delta_config.json
    weights_sha256 TEXT NOT NULL,    -- sha256 of delta.safetensors
    base_model TEXT NOT NULL, base_fingerprint TEXT NOT NULL,
    gate_passed INTEGER,             -- 1 passed, 0 failed, NULL no gate recorded
    record TEXT NOT NULL,            -- JSON: method, task, data fingerprints, metrics, gate, who/when/command
    PRIMARY KEY (name, version),
    FOREIGN KEY (name, parent) REFERENCES versions (name, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions (name, version)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, action TEXT NOT NULL,
    version INTEGER, previous INTEGER, reason TEXT, actor TEXT NOT NULL, at TEXT NOT NULL, command TEXT NOT NULL
);
"""


class RegistryError(ValueError):
    """A registry request cannot be done; the message says why and what to do."""


class RegistryIntegrityError(DeltaError):
    """A registered file is missing or its bytes no longer match the hash recorded when it was registered."""


@dataclasses.dataclass
class Version:
    name: str
    version: int
    parent: int | None
    delta_id: str
    weights_sha256: str
    base_model: str
    """Bundled name (``minilm``), absolute path, or ``@registry/models/<hex>`` for a base stored here."""
    base_fingerprint: str
    gate_passed: bool | None
    record: dict[str, Any]
    """method, options, task, trained/total parameters, data files and hashes, metrics, gate, note, who/when/command."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ref": self.ref}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def command_line() -> str:
    return shlex.join(["selectune", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("selectune", "cli.py") else shlex.join(sys.argv)


def parse_ref(ref: str) -> tuple[str, str]:
    """``name@3`` -> (name, "3"); ``name@production`` -> (name, "production"); ``name`` -> (name, "production")."""
    name, _, which = ref.partition("@")
    if not name or (which and not (which.isdigit() or which.isidentifier())):
        raise RegistryError(f"{ref!r} is not a version reference; write NAME@VERSION (bc-risk@3), NAME@production or NAME@latest")
    return name, which or PRODUCTION


class Registry:
    """Open (``create=True``: or create) the registry in ``root``. Reads need no lock; writes take it."""

    def __init__(self, root: str | os.PathLike, *, create: bool = False, lock_timeout: float = LOCK_TIMEOUT_S):
        self.root = Path(root).resolve()
        self.lock_timeout = lock_timeout
        """Longest a write waits for another writer to finish (seconds); then RegistryError."""
        if not (self.root / DATABASE).is_file():
            if not create:
                raise RegistryError(f"no registry at {root} ({DATABASE} not found); register a first version with "
                                    "`selectune registry add PATH --name NAME --registry DIR`, or give the right --registry")
            self.root.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(self.root / DATABASE, timeout=60, isolation_level=None)
        self.connection.row_factory = sqlite3.Row
        self.connection.execute("PRAGMA foreign_keys = ON")
        self.connection.execute("PRAGMA journal_mode = WAL")  # readers (a server) never wait for a writer
        self.connection.execute("PRAGMA synchronous = FULL")  # a commit that returned survives power loss
        if not self.connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'versions'").fetchone():
            with self.writing():
                pass  # new, or its creator died before the first commit: the schema is made in a write transaction

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing: one writer, one transaction ---------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """Hold the write lock and one IMMEDIATE transaction; commit on success, roll back on any error."""
        with open(self.root / LOCK, "a+") as lock:
            self._wait_for_lock(lock)
            shutil.rmtree(self.root / "staging", ignore_errors=True)  # a dead writer's half-written files
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, SCHEMA.split(";")):
                    self.connection.execute(statement)
                yield self.connection
                self.connection.execute("COMMIT")
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise

    def _wait_for_lock(self, lock) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RegistryError(f"another writer holds the registry {self.root} ({LOCK}) and has not finished within "
                                        f"{self.lock_timeout:g} s; wait for it (another `selectune registry add`, `promote` or "
                                        "`update`) and try again. A writer that died released the lock with its process.") from None
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def staging(self) -> Path:
        """A fresh folder for files being written (emptied by the next writer if this one dies). Caller holds the lock."""
        (self.root / "staging").mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.root / "staging"))

    def _place(self, staged: Path, kind: str, content_id: str) -> Path:
        """fsync a staged folder and rename it to ``kind/<content_id>``; an existing folder must verify instead."""
        final = self.root / kind / content_id
        if final.exists():
            shutil.rmtree(staged)
            return final
        replace_folder(staged, final)
        return final

    def store_delta(self, source: Path) -> tuple[str, str]:
        """Copy a delta folder in (content-addressed); return (delta_id, weights_sha256). Caller holds the lock."""
        staged = self.staging()
        for name in (DELTA_WEIGHTS, DELTA_CONFIG):
            shutil.copyfile(source / name, staged / name)
        config = json.loads((staged / DELTA_CONFIG).read_text())
        weights = file_sha256(staged / DELTA_WEIGHTS)
        if config.get("weights_sha256") != weights:
            shutil.rmtree(staged)
            raise RegistryIntegrityError(f"{source} does not match its own recorded hash; the delta is damaged, re-export it")
        delta_id = file_sha256(staged / DELTA_CONFIG).removeprefix("sha256:")
        final = self._place(staged, "deltas", delta_id)
        self.check_delta(final, delta_id, weights)  # an existing folder with this name must still be intact
        return delta_id, weights

    def store_model(self, source: Path) -> str:
        """Copy a model folder in (content-addressed); return ``@registry/models/<hex>``. Caller holds the lock."""
        staged = self.staging()
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
        for path in files:
            target = staged / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        content_id = folder_sha256(staged)
        self._place(staged, "models", content_id)
        return f"{IN_REGISTRY}models/{content_id}"

    def insert_version(self, name: str, *, parent: int | None, delta_id: str, weights_sha256: str, base_model: str,
                       base_fingerprint: str, gate_passed: bool | None, record: dict[str, Any]) -> Version:
        """Add the next version of ``name``. Caller holds ``writing()``; files must already be stored."""
        db = self.connection
        same = db.execute("SELECT version FROM versions WHERE name = ? AND delta_id = ?", (name, delta_id)).fetchone()
        if same:
            raise RegistryError(f"this delta is already registered as {name}@{same['version']}; nothing was added")
        if parent is not None and not db.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, parent)).fetchone():
            raise RegistryError(f"parent {name}@{parent} does not exist; see `selectune registry history {name}`")
        number = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?", (name,)).fetchone()[0]
        record = {**record, "created_by": actor(), "created_at": now(), "command": record.get("command") or command_line()}
        db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (name, number, parent, delta_id, weights_sha256, base_model, base_fingerprint,
                    None if gate_passed is None else int(gate_passed), json.dumps(record, sort_keys=True, default=str)))
        return Version(name, number, parent, delta_id, weights_sha256, base_model, base_fingerprint, gate_passed,
                       json.loads(json.dumps(record, default=str)))

    def promote(self, ref: str, *, override: str | None = None) -> Version:
        """Point ``production`` at a version; refused if its gate failed, unless ``override`` gives the reason."""
        with self.writing():
            version = self.get(ref)
            current = self.alias(version.name, PRODUCTION)
            if current == version.version:
                raise RegistryError(f"{version.ref} is already in production; nothing changed")
            if version.gate_passed is False and not override:
                raise RegistryError(f"{version.ref} failed its gate (criteria {version.record.get('gate', {}).get('criteria_sha256', '?')}); "
                                    "it is not promoted. Fix the update, or pass --override \"REASON\" to promote it anyway "
                                    "(the reason is recorded)")
            self._set_alias(version.name, version.version)
            self._event(version.name, "promote", version.version, current, override)
        return version

    def rollback(self, name: str, *, reason: str | None = None) -> Version:
        """Point ``production`` back at the version that was in production before the current one."""
        with self.writing():
            stack = self.production_history(name)
            if len(stack) < 2:
                raise RegistryError(f"{name} has no earlier production version to roll back to (production so far: "
                                    f"{', '.join(f'v{v}' for v in stack) or 'none'}); promote a version instead")
            self._set_alias(name, stack[-2])
            self._event(name, "rollback", stack[-2], stack[-1], reason)
        return self.get(f"{name}@{stack[-2]}")

    def _set_alias(self, name: str, version: int) -> None:
        self.connection.execute("INSERT INTO aliases VALUES (?, ?, ?) ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
                                (name, PRODUCTION, version))

    def _event(self, name: str, action: str, version: int, previous: int | None, reason: str | None) -> None:
        self.connection.execute("INSERT INTO events (name, action, version, previous, reason, actor, at, command) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                (name, action, version, previous, reason, actor(), now(), command_line()))

    # ---- reading ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [r[0] for r in self.connection.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def versions(self, name: str) -> list[Version]:
        rows = self.connection.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)).fetchall()
        if not rows:
            known = ", ".join(self.names()) or "none yet"
            raise RegistryError(f"no model named {name!r} in {self.root} (models: {known})")
        return [self._version(r) for r in rows]

    def get(self, ref: str) -> Version:
        name, which = parse_ref(ref)
        versions = self.versions(name)
        if which == "latest":
            return versions[-1]
        number = int(which) if which.isdigit() else self.alias(name, which)
        if number is None:
            raise RegistryError(f"{name} has no {which!r} version yet; promote one with `selectune registry promote {name}@VERSION`"
                                if which == PRODUCTION else f"{name} has no alias {which!r}; use a version number, production or latest")
        for version in versions:
            if version.version == number:
                return version
        raise RegistryError(f"{name}@{number} does not exist (versions: {', '.join(str(v.version) for v in versions)})")

    def alias(self, name: str, alias: str) -> int | None:
        row = self.connection.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
        return row[0] if row else None

    def events(self, name: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.connection.execute("SELECT * FROM events WHERE name = ? ORDER BY id", (name,))]

    def production_history(self, name: str) -> list[int]:
        """Versions in production over time as a stack: a promotion pushes, a rollback pops."""
        stack: list[int] = []
        for event in self.events(name):
            if event["action"] == "promote":
                stack.append(event["version"])
            elif event["action"] == "rollback":
                stack.pop()
        return stack

    def _version(self, row: sqlite3.Row) -> Version:
        gate = row["gate_passed"]
        return Version(row["name"], row["version"], row["parent"], row["delta_id"], row["weights_sha256"], row["base_model"],
                       row["base_fingerprint"], None if gate is None else bool(gate), json.loads(row["record"]))

    def base_path(self, version: Version) -> str:
        """Where the version's base model is: a bundled name, an absolute path, or a folder inside this registry."""
        return self.base_path_of(version.base_model, version.ref)

    def base_path_of(self, base_model: str, ref: str = "") -> str:
        if base_model.startswith(IN_REGISTRY):
            path = self.root / base_model[len(IN_REGISTRY):]
            if not path.is_dir() or folder_sha256(path) != path.name:
                raise RegistryIntegrityError(f"{ref + ': ' if ref else ''}the base model {path} is missing or its files changed "
                                             "since it was registered; restore the registry folder from a backup")
            return str(path)
        return base_model

    def delta_path(self, version: Version) -> Path:
        """The version's delta folder, after checking both files against the hashes recorded at registration."""
        return self.check_delta(self.root / "deltas" / version.delta_id, version.delta_id, version.weights_sha256, version.ref)

    @staticmethod
    def check_delta(folder: Path, delta_id: str, weights_sha256: str, ref: str = "") -> Path:
        label = f"{ref}: " if ref else ""
        for name, expected in ((DELTA_CONFIG, "sha256:" + delta_id), (DELTA_WEIGHTS, weights_sha256)):
            path = folder / name
            if not path.is_file():
                raise RegistryIntegrityError(f"{label}{path} is missing; restore the registry folder from a backup")
            actual = file_sha256(path)
            if actual != expected:
                raise RegistryIntegrityError(f"{label}{path} does not match the hash recorded at registration ({expected} "
                                             f"recorded, {actual} on disk); the file was changed or damaged and is refused. "
                                             "Restore it from a backup or the original delta")
        return folder

    def verify(self) -> list[str]:
        """Problems found: files that are missing or changed, aliases or parents that point nowhere."""
        problems = []
        for name in self.names():
            numbers = set()
            for version in self.versions(name):
                numbers.add(version.version)
                try:
                    self.delta_path(version)
                    self.base_path(version)
                except RegistryIntegrityError as err:
                    problems.append(str(err))
            production = self.alias(name, PRODUCTION)
            if production is not None and production not in numbers:
                problems.append(f"{name}@production points at v{production}, which does not exist")
            if self.production_history(name)[-1:] != ([production] if production is not None else []):
                problems.append(f"{name}@production (v{production}) disagrees with the promote/rollback events")
        return problems


def folder_sha256(folder: Path) -> str:
    """sha256 over the sorted relative paths and sha256s of a folder's files (hex)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}|{file_sha256(path)}\n".encode())
    return digest.hexdigest()
