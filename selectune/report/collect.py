"""Read the saved evidence of a run (and of the gate that judged it); never load a model or data file.

A run folder is what ``selectune train --out`` wrote: ``run_config.json``, ``metrics.json``, ``delta/`` and,
when the data checks ran, ``checks.json``. A gate folder is what ``selectune gate --out`` wrote.
Every file is checked for presence and parseable JSON before anything is rendered, so a wrong folder
stops with a message that names the missing file and the command that writes it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectune.data import DataError
from selectune.delta import DELTA_CONFIG, DELTA_WEIGHTS
from selectune.fingerprint import file_sha256

RUN_FILES = ("run_config.json", "metrics.json", f"delta/{DELTA_CONFIG}", f"delta/{DELTA_WEIGHTS}")


def read_json(path: Path, written_by: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); it should be written by `{written_by}` — run that again "
                        "instead of editing the file by hand.") from None


@dataclass
class RunEvidence:
    """The saved files of one training run."""
    path: Path
    config: dict  # run_config.json
    metrics: dict  # metrics.json
    delta: dict  # delta/delta_config.json
    delta_bytes: int
    delta_sha256: str  # recomputed now from delta.safetensors
    checks: dict | None  # checks.json, when the data checks ran

    @property
    def delta_intact(self) -> bool:
        """The weights file still hashes to what was recorded when it was written."""
        return self.delta_sha256 == self.delta.get("weights_sha256")

    @property
    def selection(self) -> dict:
        return self.delta.get("selection", {})

    @property
    def task(self) -> dict:
        return self.delta.get("metadata", {}).get("task", {})


def read_run(path: str | Path, role: str = "run") -> RunEvidence:
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{role} folder {path} does not exist; give a folder written by `selectune train --out`.")
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{role} folder {path} lacks {', '.join(missing)}; give a complete folder written by "
                        "`selectune train --out` (a run that stopped early leaves no folder).")
    weights = folder / "delta" / DELTA_WEIGHTS
    checks_file = folder / "checks.json"
    return RunEvidence(
        path=folder,
        config=read_json(folder / "run_config.json", "selectune train"),
        metrics=read_json(folder / "metrics.json", "selectune train"),
        delta=read_json(folder / "delta" / DELTA_CONFIG, "selectune train"),
        delta_bytes=weights.stat().st_size,
        delta_sha256=file_sha256(weights),
        checks=read_json(checks_file, "selectune train") if checks_file.is_file() else None,
    )
