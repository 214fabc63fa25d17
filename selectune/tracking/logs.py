"""What each command logs to MLflow, read from the files it wrote (never retyped from memory, so the MLflow run and
OUT say the same): the resolved settings as parameters, the metrics (with their bootstrap CI bounds where the
command has them: ``macro_f1``, ``macro_f1_ci_low``, ``macro_f1_ci_high``), the delta folder and the evidence
files as artifacts, and the gate's verdict as a metric (``gate_passed`` 1/0) and a tag (``selectune.gate``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import selectune
from selectune.tracking.mlflow_client import RunLog

# Written by the command itself, not settings: left out of the parameters.
NOT_SETTINGS = ("argv", "command", "environment")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _tags(command: str, out: Path, **more: Any) -> dict[str, str]:
    return {"selectune.command": command, "selectune.out": str(out.resolve()), "selectune.version": selectune.__version__,
            **{f"selectune.{k}": str(v) for k, v in more.items() if v is not None}}


def with_ci(values: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    """``{metric: number}`` or ``{metric: {value|mean, ci_low, ci_high, sd}}`` -> flat metrics with the CI bounds beside."""
    flat: dict[str, float | None] = {}
    for name, value in (values or {}).items():
        if not isinstance(value, dict):
            flat[f"{prefix}{name}"] = value
            continue
        flat[f"{prefix}{name}"] = value.get("value", value.get("mean"))
        for bound in ("ci_low", "ci_high", "sd"):
            if bound in value:
                flat[f"{prefix}{name}_{bound}"] = value[bound]
    return flat


def train_log(out: Path) -> RunLog:
    """``selectune train --out OUT``: run_config.json as parameters; test metrics beside the majority-class floor and
    the best validation value; the validation curve per epoch; delta/ and the run's JSON files as artifacts (and
    model/ for a new tabular base: the delta's base exists nowhere else)."""
    config, metrics = _read(out / "run_config.json"), _read(out / "metrics.json")
    values = {**with_ci(metrics.get("test") or {}), **with_ci(metrics.get("majority_baseline") or {}, "majority_"),
              **with_ci(metrics.get("best_validation") or {}, "best_val_"),
              **{k: metrics.get(k) for k in ("trainable_parameters", "trainable_percent", "best_epoch", "train_seconds")}}
    steps = [{k: v for k, v in row.items() if k != "epoch"} for row in metrics.get("history") or []]
    return RunLog(name=f"train {out.name}", params={k: v for k, v in config.items() if k not in NOT_SETTINGS}, metrics=values,
                  steps=steps, tags=_tags("train", out, method=config.get("method"), task=config.get("task"), run_folder=out.resolve()),
                  artifacts=[("delta", out / "delta"), ("", out / "metrics.json"), ("", out / "run_config.json"),
                             ("", out / "checks.json"), *([("model", out / "model")] if config.get("model") == "mlp" else [])])


def gate_log(out: Path) -> RunLog:
    """``selectune gate --out OUT``: the evaluation settings and criteria as parameters; the update's metrics with CIs,
    the base's (``base_``) and the paired difference (``update_minus_base_``); pass/fail; OUT and the update's delta."""
    record, evaluation = _read(out / "gate.json"), _read(out / "evaluation.json")
    models = evaluation["models"]
    values = {**with_ci(models["update"]["metrics"]), **with_ci(models["base"]["metrics"], "base_"),
              **with_ci(evaluation.get("paired_differences") or {}, "update_minus_base_"), "gate_passed": record["passed"]}
    values.update({f"criterion.{row['id']}_passed": row["passed"] for row in record["rows"]})
    params = {"settings": record["settings"], "test": record["test"], "base": record["base"], "update": record["update"],
              "criteria": {"path": record["criteria"]["path"], "sha256": record["criteria"]["sha256"]}}
    delta = models["update"]["identity"].get("delta")
    artifacts = [("gate", out), *([("delta", Path(delta))] if delta else [])]
    return RunLog(name=f"gate {out.name}", params=params, metrics=values, artifacts=artifacts,
                  tags=_tags("gate", out, gate="passed" if record["passed"] else "failed", method=record["update"].get("method")))


def update_log(out: Path) -> RunLog:
    """``selectune update --out OUT``: its training run (as ``train`` logs it), the parent's metrics on the same test
    rows (``parent_``), the registered version; with --criteria, the gate's metrics with CIs and its verdict."""
    result = _read(out / "update.json")
    log = train_log(out / "run")
    log.name = f"update {result['version']}"
    log.params.update({"update": {"from": result["parent"], "version": result["version"], "method": result["method"],
                                  "test_rows": result["test_rows"]}})
    log.metrics.update(with_ci(result.get("parent_test") or {}, "parent_"))
    log.tags.update(_tags("update", out, registry_version=result["version"], parent=result["parent"]))
    log.artifacts.append(("", out / "update.json"))
    if (out / "gate" / "gate.json").is_file():  # the gate's values (same test rows) with CIs replace the point values
        gate = gate_log(out / "gate")
        log.metrics.update(gate.metrics)
        log.params.update({"gate": gate.params["settings"], "criteria": gate.params["criteria"]})
        log.tags["selectune.gate"] = gate.tags["selectune.gate"]
        log.artifacts.append(("gate", out / "gate"))
    return log


def compare_log(out: Path) -> RunLog:
    """``selectune compare --out OUT``: the shared settings and the recommendation on the parent run; one nested run
    per method with its chosen learning rate, its seed-mean test metrics with sd and bootstrap CIs, and its costs."""
    result = _read(out / "compare.json")
    children = []
    for summary in result["methods"]:
        values = {**with_ci(summary["test"]), **with_ci({result["metric"]: summary["validation"]}, "val_"),
                  **{k: summary.get(k) for k in ("trainable_parameters", "trainable_percent", "delta_bytes", "train_seconds",
                                                 "median_step_seconds", "peak_memory_mb")}}
        children.append(RunLog(name=summary["method"], metrics=values,
                               params={k: summary[k] for k in ("method", "kind", "options", "lr", "lrs_tried", "seeds")},
                               tags=_tags("compare", out, method=summary["method"])))
    advice = result.get("recommendation") or {}
    return RunLog(name=f"compare {out.name}", params={k: v for k, v in result["config"].items() if k not in NOT_SETTINGS},
                  metrics=with_ci(result.get("majority_baseline") or {}, "majority_"), children=children,
                  tags=_tags("compare", out, recommended=advice.get("recommended"), best=advice.get("best")),
                  artifacts=[("", out / "compare.json"), *(("plots", out / name) for name in result.get("plots", [])),
                             ("runs", out / "runs")])


def report_log(out: Path, run_folder: Path, gate: str | None) -> RunLog:
    """``selectune report --out OUT``: report.html, report.md and figures/, for the run of the update it reports on
    (the training run's ``selectune.run_folder`` tag finds it) or, when that run was never logged, a run of its own."""
    return RunLog(name=f"report {run_folder.name}", artifacts=[("report", out)],
                  tags={**_tags("report", out, report_gate=gate), "selectune.report": str(out.resolve())})
