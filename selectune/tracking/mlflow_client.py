"""The one module that imports mlflow, and only when ``--mlflow-uri`` is given: it is an optional extra
(``pip install 'selectune[mlflow]'``) and importing it costs seconds.

A command logs after its local outputs are complete (``OUT`` renamed into place), so an MLflow server that is
down or goes away never leaves a half-written run folder: the server is asked first (``connect``, before any
work), and a failure while logging says that OUT is complete and how to log again.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

INSTALL_FIX = "pip install 'selectune[mlflow]'"
PARAM_VALUE_LIMIT = 6000  # characters MLflow keeps of a parameter's value
BATCH = 100  # parameters per log_batch call (MLflow's limit; metrics allow 1000)


class TrackingError(ValueError):
    """``--mlflow-uri`` could not be used: mlflow is not installed, the server does not answer, or logging failed.
    A ValueError, so the CLI stops with exit 2 and this message, never a traceback."""


def _import_mlflow() -> Any:
    # Set before mlflow reads them; a user's own settings win. No usage reports from a clinical machine, and an
    # unreachable server fails within seconds, not after minutes of exponential backoff.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    try:
        import mlflow
    except ImportError:
        raise TrackingError(f"--mlflow-uri needs the mlflow package, which is not installed; install it with: {INSTALL_FIX}") from None
    return mlflow


def _check_reachable(uri: str) -> None:
    """An http(s) tracking server must answer its /health endpoint; other URIs (file:, sqlite:) are local."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
            response.read()
    except urllib.error.HTTPError as err:
        raise TrackingError(f"--mlflow-uri {uri} answered HTTP {err.code} on /health; is it an MLflow tracking server?") from None
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"the MLflow server at --mlflow-uri {uri} does not answer ({reason}); start it "
                            "(`mlflow server --host 127.0.0.1 --port 5000`) or correct --mlflow-uri. Nothing was written.") from None


def connect(uri: str) -> Any:
    """An ``mlflow.MlflowClient`` for URI (tracking and model registry), after checking the server answers."""
    _import_mlflow()
    from mlflow import MlflowClient

    _check_reachable(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def reporting(failure: str) -> Iterator[None]:
    """Any MLflow or network error inside becomes a TrackingError that starts with ``failure``."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as err:
        message = str(getattr(err, "message", err)).splitlines()[0][:400]
        raise TrackingError(f"{failure}: {type(err).__name__}: {message}") from None


@dataclass
class RunLog:
    """What one command logs as one MLflow run: read from the files it wrote (``selectune.tracking.logs``)."""
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    """Nested settings; flattened to ``a.b`` keys, values as text (lists and dicts as JSON)."""
    metrics: dict[str, float | None] = field(default_factory=dict)
    """Final values; None and non-finite values (an undefined AUROC) are left out."""
    steps: list[dict[str, float]] = field(default_factory=list)
    """Per-epoch metrics (step = epoch, from 1)."""
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[str, Path]] = field(default_factory=list)
    """(artifact folder, "" for the root; a local file or folder), logged if it exists."""
    children: list[RunLog] = field(default_factory=list)
    """Nested runs (``compare``: one per method)."""


def metric_key(name: str) -> str:
    """A name MLflow accepts (alphanumerics, ``_ - . space : /``): ``bitfit:roles=query+mlp_in`` -> ``bitfit:roles_query_mlp_in``."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": "1", "c": "[1, 2]"}`` (keys MLflow accepts, values cut to its limit)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = metric_key(f"{prefix}{key}")
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
            flat[name] = text[:PARAM_VALUE_LIMIT]
    return flat


def log_run(uri: str, experiment: str, log: RunLog, *, done: str) -> str:
    """Log ``log`` (and its children) into EXPERIMENT at URI; the run id. ``done`` says what is already written locally,
    for the message when logging fails."""
    client = connect(uri)
    with reporting(f"{done}; logging it to MLflow at {uri} failed"):
        return log_with(client, experiment_id(client, experiment), log)


def experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def log_with(client: Any, experiment: str, log: RunLog, parent: str | None = None) -> str:
    """One run: create, log everything in batches, upload the artifacts, nested runs, finish; its id."""
    from mlflow.entities import Metric, Param

    tags = {**log.tags, **({"mlflow.parentRunId": parent} if parent else {})}
    run_id = client.create_run(experiment, run_name=log.name, tags=tags).info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, v) for k, v in flatten(log.params).items()]
    metrics = [Metric(metric_key(k), float(v), now, 0) for k, v in log.metrics.items() if _finite(v)]
    metrics += [Metric(metric_key(k), float(v), now, step) for step, row in enumerate(log.steps, 1) for k, v in row.items() if _finite(v)]
    for start in range(0, max(len(params), len(metrics)), BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH], params=params[start:start + BATCH])
    upload(client, run_id, log.artifacts)
    for child in log.children:
        log_with(client, experiment, child, parent=run_id)
    with contextlib.redirect_stdout(sys.stderr):  # mlflow prints the run's URL: a note, not the command's output
        client.set_terminated(run_id)
    return run_id


def upload(client: Any, run_id: str, artifacts: list[tuple[str, Path]]) -> None:
    for where, local in artifacts:
        if local.is_dir():
            client.log_artifacts(run_id, str(local), where or None)
        elif local.is_file():
            client.log_artifact(run_id, str(local), where or None)


def log_beside(uri: str, experiment: str, log: RunLog, tag: tuple[str, str], *, done: str) -> str:
    """``log``'s artifacts and tags added to the latest run in EXPERIMENT whose tag ``tag[0]`` is ``tag[1]`` (the run a
    report is about), or ``log`` as a run of its own when there is none; the run id."""
    client = connect(uri)
    with reporting(f"{done}; logging it to MLflow at {uri} failed"):
        experiment = experiment_id(client, experiment)
        found = client.search_runs([experiment], filter_string=f"tags.`{tag[0]}` = '{quoted(tag[1])}'", max_results=1,
                                   order_by=["attributes.start_time DESC"])
        if not found:
            return log_with(client, experiment, log)
        run_id = found[0].info.run_id
        upload(client, run_id, log.artifacts)
        for key, text in log.tags.items():
            if key not in found[0].data.tags:  # the run's own command and OUT stay
                client.set_tag(run_id, key, text)
        return run_id


def quoted(text: str) -> str:
    """TEXT inside '...' of an MLflow search filter."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))  # a bool logs as 1.0 / 0.0
