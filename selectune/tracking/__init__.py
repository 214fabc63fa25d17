"""MLflow, for teams that run it: ``--mlflow-uri`` on ``train``, ``update``, ``gate`` and ``compare`` logs the finished
command (``logs``), and the registry commands mirror versions into an MLflow Model Registry (``mirror``).

Optional: mlflow is imported by ``mlflow_client`` only, and only when a URI is given; without it, ``--mlflow-uri``
stops with exit 2 and the fix (``pip install 'selectune[mlflow]'``). Order of work, for every command: ``check``
before anything is read or written (mlflow importable, server answering), the command writes its outputs as
without tracking, then ``log`` reads them back and logs them. So an MLflow failure never leaves a half-written
OUT; a failure while logging says OUT is complete.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from selectune.config import TrackingConfig
from selectune.tracking.mlflow_client import INSTALL_FIX, RunLog, TrackingError, connect, log_beside, log_run
from selectune.tracking.logs import report_log

__all__ = ["INSTALL_FIX", "RunLog", "TrackingConfig", "TrackingError", "check", "log", "log_report"]


def check(tracking: TrackingConfig) -> None:
    """With ``--mlflow-uri``: mlflow is installed and the server answers, before the command does any work."""
    if tracking.mlflow_uri:
        connect(tracking.mlflow_uri)


def log(tracking: TrackingConfig, build: Callable[[Path], RunLog], out: str | Path) -> str | None:
    """With ``--mlflow-uri``: the run ``build(OUT)`` describes, logged; its MLflow run id (None without a URI)."""
    if not tracking.mlflow_uri:
        return None
    return log_run(tracking.mlflow_uri, tracking.mlflow_experiment, build(Path(out)), done=f"{out} is complete")


def log_report(tracking: TrackingConfig, out: str | Path, run_folder: Path, gate: str | None) -> str | None:
    """With ``--mlflow-uri``: the written report (``report.html`` and all) added to the MLflow run of the training run it
    reports on, found by its ``selectune.run_folder`` tag, or logged as a run of its own; the run id."""
    if not tracking.mlflow_uri:
        return None
    log = report_log(Path(out), run_folder, gate)
    return log_beside(tracking.mlflow_uri, tracking.mlflow_experiment, log, ("selectune.run_folder", str(run_folder.resolve())),
                      done=f"{out} is complete")
