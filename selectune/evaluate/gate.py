"""``selectune gate``: may this update replace the model in use? Criteria fixed beforehand, evidence, a verdict.

Writes into ``--out`` (all at once, through a partial folder renamed at the end):

``gate.json`` (schema ``selectune-gate/1``; the model is ``selectune.evaluate.records.GateRecord``)
    ``passed`` (the CLI exits 1 when false); ``rows``: one per criterion with ``id``, ``criterion`` (text),
    ``metric``, ``rule``, ``params``, ``passed``, ``evidence`` (text) and ``values`` (the numbers judged);
    ``criteria``: the file's ``path``, ``sha256``, full ``text`` and parsed entries (so a later edit of the file
    shows); ``evaluation_sha256`` of the evaluation.json beside it; ``base``/``update`` short identities;
    ``command``, ``created``.
``evaluation.json`` (schema ``selectune-evaluation/1``; model ``records.Evaluation``) — everything a report needs, no model re-run:
    ``settings`` (seed, resamples, confidence, threshold rule, min group n, group columns, positive label,
    bootstrap and ECE method), ``definitions`` (metric -> text), ``task`` (kind, labels, positive label,
    label counts, n), ``data`` (test file path/sha256/rows; ``checks``: per model, the leakage checks of its training data against
    the test file, as ``selectune check`` reports them), ``models``:
    {base, update} each with ``identity`` (source path and kind, delta sha256 + config, base model +
    fingerprint, method, run_config.json and metrics.json of the training run when present), ``threshold``
    (value, rule, validation source), ``metrics`` {metric: {value, ci_low, ci_high, valid_resamples}},
    ``curves`` (``roc`` {label: fpr, tpr, threshold}, ``pr`` {label: precision, recall, threshold},
    ``calibration`` {predicted, observed, count, of, bins, strategy}), ``confusion`` at the threshold;
    ``paired_differences`` {metric: update - base with paired CI}; ``subgroups`` {column: [rows: group, n,
    positives, prevalence, small, ci_reliable, metrics {base, update}, difference]}; ``fairness`` {column:
    {included, excluded, base/update: {demographic_parity_difference, equalized_odds_difference, by_group}}};
    ``environment`` (library versions), ``command``, ``created``.
``criteria.yaml``: a byte-identical copy of the criteria file (its sha256 is the one recorded).
``predictions.csv``: per test row: label, group columns, each model's probabilities and flag (no input text).
``answers.json`` (generative tasks only, e.g. causal-lm): ``how``, and per model (``base``, ``update``) the first few test
    prompts with its greedy answer (``{"prompt", "answer"}``), for the report's side-by-side table.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from selectune.config import TrackingConfig, with_settings
from selectune.data import DataError, load_splits, read_table
from selectune.delta import DELTA_CONFIG, read_delta
from selectune.fingerprint import file_sha256
from selectune.io import atomic_write_bytes, atomic_write_json, staged_folder
from selectune.evaluate.criteria import CriteriaFile, check_applicable, judge, load_criteria
from selectune.evaluate.metrics import choose_threshold, parse_threshold_rule
from selectune.evaluate.records import (CriteriaRecord, Evaluation, EvaluationData, GateRecord, GateRow, ModelIdentity,
                                        ShortIdentity, TestFile, Threshold)
from selectune.evaluate.run import model_outputs, read_frame
from selectune.evaluate.scorecard import add_perplexity, EvaluationSettings, score_predictions
from selectune.models import load_trained
from selectune.refs import TrainedModel, resolve_trained_model
from selectune.tasks import ModelLoadError, Task, task_from_metadata
from selectune.text_table import table
from selectune.tracking import check as check_tracking, log as log_to_mlflow
from selectune.tracking.logs import gate_log

ROLES = ("base", "update")
ANSWERS_FILE = "answers.json"
ANSWERS_HOW = "the first test rows' prompts, each answered greedily by base and update (the task's answer_samples)"


@dataclass
class ModelSource:
    """What a user handed the gate (a training run folder, a delta folder, a merged model folder or a registry
    version, resolved by ``selectune.refs``) and the task it answers."""
    trained: TrainedModel
    task: Task

    @property
    def path(self) -> str:
        given = self.trained.given
        return given if self.trained.form == "registry" else str(Path(given))

    @property
    def kind(self) -> str:
        """``run``, ``delta``, ``merged`` or ``registry`` (the forms of ``selectune.refs.FORMS``)."""
        return self.trained.form

    @property
    def delta(self) -> str | None:
        return self.trained.delta

    @property
    def merged(self) -> str | None:
        return self.trained.merged

    @property
    def run_dir(self) -> Path | None:
        """Folder holding run_config.json / metrics.json, when known."""
        return self.trained.run_dir

    def load(self, force: bool = False) -> tuple[Any, Task]:
        """(model, task); the loaded task carries the tokenizer that ``self.task`` (from metadata) lacks. A registry
        version loads on the registry's copy of its base."""
        return load_trained(self.trained, force=force)


def resolve_source(path: str, role: str) -> ModelSource:
    trained = resolve_trained_model(path, option=role)
    if trained.delta:
        _, config = read_delta(trained.delta)  # verifies the weights hash before anything runs
        if "task" not in config.get("metadata", {}):
            raise ModelLoadError(f"--{role} {trained.delta} has no task metadata; it was not written by `selectune train`.")
    return ModelSource(trained=trained, task=task_from_metadata(trained.task_metadata()))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def identity(source: ModelSource) -> ModelIdentity:
    """Who the model is: hashes, base model and fingerprint, method, and its training run's records."""
    # A registry version is recorded as the delta the registry keeps (verified against its registered hash).
    registered = source.kind == "registry"
    out: dict[str, Any] = {"source": str(Path(source.delta if registered else source.path).resolve()),
                           "kind": "delta" if registered else source.kind, "task": source.task.metadata()}
    if source.delta:
        _, config = read_delta(source.delta)
        selection, meta = config["selection"], config.get("metadata", {})
        out.update({"delta": str(Path(source.delta).resolve()), "delta_weights_sha256": config["weights_sha256"],
                    "delta_config_sha256": file_sha256(Path(source.delta) / DELTA_CONFIG),
                    "delta_bytes": (Path(source.delta) / "delta.safetensors").stat().st_size,
                    "base_model": meta.get("base_model"), "base_fingerprint": selection.get("base_fingerprint"),
                    "method": selection.get("method"), "method_options": selection.get("options"),
                    "selectune_version": config.get("selectune_version")})
    else:
        out["merge"] = _read_json(Path(source.merged) / "selectune_merge.json")
        weights = sorted(Path(source.merged).glob("*.safetensors"))
        out["weights_sha256"] = {w.name: file_sha256(w) for w in weights}
    if source.run_dir is not None:
        out["run_config"] = _read_json(source.run_dir / "run_config.json")
        out["run_metrics"] = _read_json(source.run_dir / "metrics.json")
    return ModelIdentity.model_validate(out)


def compatible(base: ModelSource, update: ModelSource) -> None:
    a, b = base.task, update.task
    if a.name != b.name or a.labels != b.labels or a.label_col != b.label_col:
        raise ModelLoadError(f"base and update answer different questions: base {a.name} {a.label_col}={a.labels}, update "
                             f"{b.name} {b.label_col}={b.labels}; a gate compares two models of the same task and labels.")


def resolve_positive_label(task: Task, given: str | None) -> str | None:
    """The class thresholds and sensitivity treat as positive; None for a task without classes."""
    return task.positive_label(given)


def validation_frame(source: ModelSource, validation: str | None) -> tuple[pd.DataFrame | str, dict[str, Any]]:
    """The rows a threshold is chosen on: --validation, else the validation split of the model's own run."""
    if validation:
        return validation, {"source": "file", "path": str(Path(validation).resolve()), "sha256": file_sha256(validation)}
    config = _read_json(source.run_dir / "run_config.json") if source.run_dir else None
    if config is None:
        raise ValueError(f"{source.path} has no run_config.json to rebuild its validation split from; pass --validation FILE "
                         "(thresholds are chosen on validation rows, never on test)")
    recorded = config.get("data_files", {})
    for role, entry in recorded.items():
        if Path(entry["path"]).is_file() and file_sha256(entry["path"]) != entry["sha256"]:
            raise DataError(f"{entry['path']} ({role} data of {source.path}) changed since training (sha256 differs), so its "
                            "validation split cannot be rebuilt; pass --validation FILE")
        if not Path(entry["path"]).is_file():
            raise DataError(f"{entry['path']} ({role} data of {source.path}) is gone; pass --validation FILE")
    paths = {role: recorded[role]["path"] if role in recorded else None for role in ("train", "validation", "test")}
    if paths["validation"]:
        return paths["validation"], {"source": "file of the training run", **recorded["validation"]}
    # The same call, same seed, as `selectune train` made: the identical split.
    splits = load_splits(paths["train"], None, paths["test"], label_col=config["label_col"], **source.task.data_options(),
                         val_fraction=config["val_fraction"], test_fraction=config["test_fraction"] or 0.0,
                         group_col=config["group_col"], seed=config["train_config"]["seed"])
    if splits.validation is None:
        raise ValueError(f"{source.path} was trained with --val-fraction 0 (no validation rows); thresholds are chosen on "
                         "validation rows, never on test: pass --validation FILE (rows the model did not train on)")
    return splits.validation, {"source": "validation split of the training run", "protocol": splits.protocol,
                               "train": recorded["train"], "rows": len(splits.validation)}


def leakage_check(source: ModelSource, test: str, test_frame: pd.DataFrame, role: str) -> dict[str, Any]:
    """Refuse a test file that shares rows (or patient ids) with the model's training data: it would flatter the model.

    Runs the data checks of ``selectune check`` on {train (+ validation file), test}; the record (counts and
    row numbers only) goes into evaluation.json.
    """
    from selectune.data.checks import DataCheckRefused, run_checks

    config = _read_json(source.run_dir / "run_config.json") if source.run_dir else None
    files = (config or {}).get("data_files", {})
    if "train" not in files or not Path(files["train"]["path"]).is_file():
        return {"status": "skipped", "reason": "the training data of this model are unknown or gone; overlap with the test file "
                                               "was not checked"}
    frames = {"train": read_table(files["train"]["path"]), "test": test_frame}
    if "validation" in files and Path(files["validation"]["path"]).is_file():
        frames["validation"] = read_table(files["validation"]["path"])
    task = source.task
    id_col = config.get("group_col")
    id_col = id_col if id_col and all(id_col in f.columns for f in frames.values()) else None
    try:
        columns = task.data_options()
        report = run_checks(frames, text_col=columns["text_col"], feature_cols=columns["feature_cols"], id_col=id_col,
                            sources={"train": files["train"]["path"], "test": test}, raise_on_refusal=True)
    except DataCheckRefused as err:
        raise DataError(f"{role} ({source.path}) was trained on {files['train']['path']}, which overlaps the test file {test}: {err} "
                        "A gate needs test rows neither model has seen.") from None
    return report.to_json()


def _environment() -> dict[str, str]:
    import fairlearn
    import scipy

    from selectune.train.run import environment

    return {**environment(), "numpy": np.__version__, "pandas": pd.__version__, "scipy": scipy.__version__,
            "fairlearn": fairlearn.__version__}


def gate(*, base: str, update: str, criteria: str, test: str, out: str, validation: str | None = None,
         scoring: EvaluationSettings = EvaluationSettings(), batch_size: int = 64, overwrite: bool = False,
         tracking: TrackingConfig = TrackingConfig(), **flat: Any) -> dict[str, Any]:
    """Decide whether UPDATE may replace BASE: criteria fixed in advance, judged on a test file; exit 1 on fail.

    base: the model in use: a `selectune train --out` folder, its delta/ folder, a `selectune merge` folder, or a registry reference NAME@VERSION (NAME@production; REGISTRY_DIR/NAME@VERSION for a registry other than ./registry)
    update: the candidate, in the same forms
    criteria: acceptance criteria (YAML) written before evaluation; its sha256 and text are recorded
    test: labelled test file neither model trained on
    out: output folder: gate.json, evaluation.json, criteria.yaml, predictions.csv
    validation: labelled file to choose thresholds on (default: each model's own validation split)
    batch_size: examples per forward pass
    overwrite: replace OUT if it exists

    The evaluation settings (``--resamples``, ``--group-cols``, ``--threshold-rule``, ...) are the fields of
    ``EvaluationSettings``; Python callers may give them flat: ``gate(..., group_cols="site", resamples=200)``.
    """
    started = time.time()
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} already exists; choose another --out or pass --overwrite")
    # A copy: the positive label resolved below must not land in the caller's (or the default) settings.
    configs = with_settings("gate", {"scoring": scoring, "tracking": tracking}, flat)
    settings, tracking = dataclasses.replace(configs["scoring"]), configs["tracking"]
    groups, positive_label = settings.group_cols, settings.positive_label
    settings.validate()
    parse_threshold_rule(settings.threshold_rule)
    rules = load_criteria(criteria)
    check_tracking(tracking)  # mlflow installed and its server answering, before any model runs

    # setup: who is compared, on what; everything here is cheap and fails before any model runs
    sources = load_sources(base, update)
    task = sources["update"].task
    settings.positive_label = resolve_positive_label(task, positive_label)
    check_applicable(rules, classification=task.outputs_probabilities, group_cols=groups, loss_metrics=list(task.loss_metrics(0.0)))
    rows = check_data(sources, task, test, validation, settings)

    # evaluate: each model on the test rows; its threshold on validation rows
    outputs, thresholds, losses, answers = evaluate_models(sources, task, rows, settings, batch_size)
    evaluation = build_evaluation(sources, task, rows, outputs, thresholds, settings, started, losses)

    # judge: one row per criterion, in the file's order
    judged = [judge(c, evaluation.dump(), settings.confidence) for c in rules.criteria]
    evaluation_bytes = evaluation.dump_json()
    record = GateRecord(passed=all(r["passed"] for r in judged), rows=[GateRow(**r) for r in judged],
                        criteria=CriteriaRecord.model_validate(rules.record()), evaluation_sha256=_sha256(evaluation_bytes),
                        base=ShortIdentity.of(evaluation.models["base"].identity),
                        update=ShortIdentity.of(evaluation.models["update"].identity),
                        test=evaluation.data.test, settings=evaluation.settings, command=sys.argv, created=evaluation.created)
    predictions = _predictions(rows.frames["update"], rows.y, outputs, {r: t.value if t else None for r, t in thresholds.items()},
                               task, settings, groups)
    _write(target, record, evaluation_bytes, rules, predictions, answers)
    scores = evaluation.dump()
    run_id = log_to_mlflow(tracking, gate_log, target)  # after OUT is complete: a logging failure leaves it whole
    return {**record.dump(), "out": str(target), "headline": {role: scores["models"][role]["metrics"] for role in ROLES},
            "paired_differences": scores["paired_differences"], **({"mlflow_run_id": run_id} if run_id else {})}


def load_sources(base: str, update: str) -> dict[str, ModelSource]:
    """The two models, resolved and checked to answer the same question (no model is loaded yet)."""
    sources = {"base": resolve_source(base, "base"), "update": resolve_source(update, "update")}
    compatible(sources["base"], sources["update"])
    return sources


@dataclass
class TestRows:
    """The test file as each model reads it, its labels, leakage checks, and the rows thresholds are chosen on."""
    path: str
    raw: pd.DataFrame
    frames: dict[str, pd.DataFrame]  # role -> the test rows as that model's task reads them
    y: np.ndarray  # (N,) label ids (classification) or values (regression)
    checks: dict[str, dict[str, Any]]  # role -> data-check record of its training data against the test file
    validations: dict[str, tuple[pd.DataFrame, dict[str, Any]]]  # role -> (validation rows, where they came from)


def _needs_validation(settings: EvaluationSettings) -> bool:
    """A threshold is chosen on validation rows unless the rule fixes it; a task without classes has none."""
    return settings.positive_label is not None and not settings.threshold_rule.startswith("fixed")


def check_data(sources: dict[str, ModelSource], task: Task, test: str, validation: str | None,
               settings: EvaluationSettings) -> TestRows:
    """Read the test rows and the validation rows, and refuse missing group columns or test rows a model trained on."""
    groups = settings.group_cols
    frames = {role: read_frame(src.task, test, need_labels=True) for role, src in sources.items()}
    missing = [c for c in groups if c not in frames["update"].columns]
    if missing:
        raise DataError(f"--group-cols {missing} not found in {test}; it has columns {list(frames['update'].columns)[:15]}")
    y = task.label_ids(frames["update"])
    test_raw = read_table(test)
    checks = {role: leakage_check(src, test, test_raw, role) for role, src in sources.items()}
    validations = {}
    if _needs_validation(settings):
        for role, src in sources.items():
            rows, record = validation_frame(src, validation)
            if isinstance(rows, str):
                rows = read_frame(src.task, rows, need_labels=True)
            validations[role] = (rows, record)
    return TestRows(path=test, raw=test_raw, frames=frames, y=y, checks=checks, validations=validations)


def evaluate_models(sources: dict[str, ModelSource], task: Task, rows: TestRows, settings: EvaluationSettings,
                    batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, Threshold | None], dict[str, np.ndarray], dict[str, list]]:
    """Each model's outputs on the test rows ((N, C) probabilities or (N,) values), its threshold (None: regression) and,
    where the task has them, its per-row (loss sum, tokens) for loss metrics such as perplexity and its answers to the
    first few test prompts (a generative task's ``answer_samples``)."""
    outputs, thresholds, losses, answers = {}, {}, {}, {}
    for role, src in sources.items():
        net, loaded = src.load()
        outputs[role] = model_outputs(net, loaded, rows.frames[role], batch_size)
        thresholds[role] = choose_model_threshold(role, src, net, loaded, task, rows, settings, batch_size)
        row_losses = loaded.row_losses(net, rows.frames[role], batch_size)
        if row_losses is not None:
            losses[role] = row_losses
        samples = loaded.answer_samples(net, rows.frames[role])
        if samples is not None:
            answers[role] = samples
        del net
    return outputs, thresholds, losses, answers


def choose_model_threshold(role: str, src: ModelSource, net, loaded: Task, task: Task, rows: TestRows, settings: EvaluationSettings,
                           batch_size: int) -> Threshold | None:
    """The threshold on P(positive): chosen on this model's validation rows by the rule, or the fixed value."""
    rule = settings.threshold_rule
    if settings.positive_label is None:  # no classes: no threshold
        return None
    pos = task.labels.index(settings.positive_label)
    if not _needs_validation(settings):
        return Threshold(value=parse_threshold_rule(rule)[1], rule=rule, validation=None)
    validation, record = rows.validations[role]
    scores = model_outputs(net, loaded, validation, batch_size)[:, pos]
    truth = src.task.label_ids(validation) == pos
    try:
        value = choose_threshold(truth, scores, rule)
    except ValueError as err:
        raise DataError(f"{role}: {err}") from None
    return Threshold(value=value, rule=rule, validation={**record, "rows": len(validation)})


def build_evaluation(sources: dict[str, ModelSource], task: Task, rows: TestRows, outputs: dict[str, np.ndarray],
                     thresholds: dict[str, Threshold | None], settings: EvaluationSettings, started: float,
                     losses: dict[str, np.ndarray] | None = None) -> Evaluation:
    """evaluation.json: the scorecard of both models plus who they are, the data, the environment and the command."""
    groups = settings.group_cols
    scorecard = score_predictions(rows.y, outputs, {r: t.value if t else None for r, t in thresholds.items()}, task.labels, settings,
                                  rows.frames["update"][groups] if groups else None)
    if losses:
        add_perplexity(scorecard, losses, settings)
    test = TestFile(path=str(Path(rows.path).resolve()), sha256=file_sha256(rows.path), rows=len(rows.raw))
    evaluation = Evaluation.model_validate({
        **scorecard, "task": {**scorecard["task"], "kind": task.name}, "data": EvaluationData(test=test, checks=rows.checks), "environment": _environment(), "command": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.time() - started, 1)})
    for role, src in sources.items():
        evaluation.models[role].identity = identity(src)
        if thresholds[role] is not None:
            evaluation.models[role].threshold = thresholds[role]
    return evaluation


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _predictions(frame, y, outputs, thresholds, task, settings, groups) -> bytes:
    table = pd.DataFrame({"row": np.arange(len(y)), "label": frame[task.label_col].to_numpy()})
    for column in groups:
        table[column] = frame[column].to_numpy()
    for role, out in outputs.items():
        if settings.positive_label is not None:
            for i, label in enumerate(task.labels):
                table[f"{role}_prob_{label}"] = out[:, i].round(6)
            table[f"{role}_flagged_{settings.positive_label}"] = out[:, task.labels.index(settings.positive_label)] >= thresholds[role]
        else:
            table[f"{role}_prediction"] = out
    return table.to_csv(index=False).encode()


def _write(target: Path, record: GateRecord, evaluation_bytes: bytes, rules: CriteriaFile, predictions: bytes,
           answers: dict[str, list] | None = None) -> None:
    """Everything into a partial folder, renamed into place: a reader sees the old result or the whole new one."""
    with staged_folder(target) as partial:
        atomic_write_bytes(partial / "evaluation.json", evaluation_bytes)
        if answers:  # a generative task: each model's greedy answers to the same first test prompts
            atomic_write_json(partial / ANSWERS_FILE, {"how": ANSWERS_HOW, **answers})
        atomic_write_bytes(partial / "criteria.yaml", rules.text.encode("utf-8"))
        atomic_write_bytes(partial / "predictions.csv", predictions)
        atomic_write_json(partial / "gate.json", record.dump())  # last: a folder with gate.json is complete


def render(result: dict[str, Any]) -> str:
    """The pass/fail table with its evidence, after the headline metrics of both models."""
    metrics = result["headline"]
    diffs = result["paired_differences"] or {}
    level = f"{result['settings']['confidence']:.0%}"

    def with_ci(est, signed=False):
        if est["value"] is None:
            return "undefined"
        fmt = "{:+.3f}" if signed else "{:.3f}"
        ci = "" if est["ci_low"] is None else f" ({fmt.format(est['ci_low'])}, {fmt.format(est['ci_high'])})"
        return fmt.format(est["value"]) + ci

    headline = [{"metric": m, "base": with_ci(metrics["base"][m]), "update": with_ci(metrics["update"][m]),
                 "update - base (paired)": with_ci(diffs[m], True) if m in diffs else ""} for m in metrics["update"]]
    gate_rows = [{"#": i + 1, "criterion": f"{r['id']}: {r['criterion']}", "result": "PASS" if r["passed"] else "FAIL",
                  "evidence": r["evidence"]} for i, r in enumerate(result["rows"])]
    verdict = "PASSED" if result["passed"] else "FAILED"
    failed = [r["id"] for r in result["rows"] if not r["passed"]]
    lines = [f"test: {result['test']['path']} ({result['test']['rows']} rows), {result['settings']['resamples']} bootstrap "
             f"resamples, seed {result['settings']['seed']}, {level} CIs",
             table(headline, ["metric", "base", "update", "update - base (paired)"]), "",
             f"criteria: {result['criteria']['path']} ({result['criteria']['sha256'][:19]}...)",
             table(gate_rows, ["#", "criterion", "result", "evidence"]), "",
             f"gate {verdict}" + (f": {', '.join(failed)}" if failed else "") + f"  ->  {result['out']}/gate.json"]
    return "\n".join(lines)
