"""API keys and tenants: a key file maps sha256 hashes of API keys to the deltas each key may use.

The server never sees or stores a key in the clear at rest: the file holds ``sha256(key)`` in hex, and a
presented key (``Authorization: Bearer KEY``) is hashed and looked up. Key file (JSON)::

    {
      "keys": [
        {"sha256": "<64 hex>", "tenant": "st-marys-cardiology", "models": ["cardiology-triage", "echo-notes"]},
        {"sha256": "<64 hex>", "tenant": "research", "models": ["*"]},
        {"sha256": "<64 hex>", "tenant": "ops", "admin": true}
      ]
    }

``models`` lists delta names the key may call (``"*"``: every loaded delta); ``admin: true`` allows the
admin routes (load/unload, metrics) and every model. Hash a key with::

    printf '%s' "$KEY" | sha256sum | cut -d' ' -f1
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the entry and the fix."""


@dataclass(frozen=True)
class KeyEntry:
    tenant: str
    sha256: str
    models: tuple[str, ...] = ()
    """Delta names this key may call; ``"*"`` means all."""
    admin: bool = False

    def may_use(self, model: str) -> bool:
        return self.admin or "*" in self.models or model in self.models


def hash_key(key: str) -> str:
    """The hex sha256 of ``key`` as the key file stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass
class KeyRing:
    """The entries of one key file, looked up by the hash of a presented key."""

    entries: list[KeyEntry] = field(default_factory=list)

    @classmethod
    def from_file(cls, path: str | Path) -> "KeyRing":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyFileError(f"key file {path} not found; give --keys a JSON file (see `selectune serve --help`).") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise KeyFileError(f"key file {path} is not valid JSON ({err}).") from None
        raw = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(raw, list) or not raw:
            raise KeyFileError(f'key file {path} needs a non-empty "keys" list of {{"sha256", "tenant", "models"|"admin"}} entries.')
        entries, seen = [], set()
        for i, item in enumerate(raw):
            where = f"key file {path}, keys[{i}]"
            if not isinstance(item, dict):
                raise KeyFileError(f"{where} is not an object.")
            unknown = set(item) - {"sha256", "tenant", "models", "admin"}
            if unknown:
                raise KeyFileError(f"{where} has unknown field(s) {sorted(unknown)}; allowed: sha256, tenant, models, admin.")
            digest = str(item.get("sha256", "")).lower().removeprefix("sha256:")
            if not _HEX64.match(digest):
                raise KeyFileError(f"{where}: sha256 must be 64 hex characters, the hash of the key "
                                   "(printf '%s' \"$KEY\" | sha256sum), never the key itself.")
            if digest in seen:
                raise KeyFileError(f"{where}: the same key hash appears twice; give each key one entry.")
            seen.add(digest)
            tenant, models, admin = item.get("tenant"), item.get("models", []), item.get("admin", False)
            if not isinstance(tenant, str) or not tenant:
                raise KeyFileError(f"{where}: tenant must be a non-empty string.")
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise KeyFileError(f"{where}: models must be a list of delta names (or [\"*\"]).")
            if not isinstance(admin, bool):
                raise KeyFileError(f"{where}: admin must be true or false.")
            if not models and not admin:
                raise KeyFileError(f"{where}: the key may use no model; list its deltas in models or set admin: true.")
            entries.append(KeyEntry(tenant=tenant, sha256=digest, models=tuple(models), admin=admin))
        return cls(entries)

    def identify(self, key: str) -> KeyEntry | None:
        """The entry of a presented key, or None."""
        digest = hash_key(key)
        found = None
        for entry in self.entries:  # constant-time compare against every entry: no early exit to time
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found

    @property
    def has_admin(self) -> bool:
        return any(e.admin for e in self.entries)
