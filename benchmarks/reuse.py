"""When a benchmark may keep rows it wrote before: only if they were measured with the same recipe on the same
data files (sha256 of each exported file), so one changed training row or hyperparameter drops them all."""
from __future__ import annotations

import json
from pathlib import Path

from selectune.fingerprint import file_sha256


def data_sha256(files: dict[str, str]) -> dict[str, str]:
    return {name: file_sha256(Path(path)) for name, path in sorted(files.items())}


def reusable(out: Path, recipe: dict, data: dict[str, str]) -> dict:
    """The previous result at `out` if its recipe and data hashes equal these, else {} (start afresh)."""
    previous = json.loads(out.read_text()) if out.is_file() else {}
    return previous if previous.get("recipe") == recipe and previous.get("data_sha256") == data else {}
