"""``selectune update --from NAME@V --data new.csv``: a continual update, evaluated against the version it
starts from on the same test rows, gated, and registered as a child of that version.

Everything goes into ``--out`` (the registry keeps the delta and the record)::

    OUT/split/        train.csv, validation.csv, test.csv: the rows used, split once with the seed
    OUT/run/          the training run (`selectune train --init-delta`): delta/, metrics.json, run_config.json
    OUT/parent/       version V merged into a plain model folder, as the gate's base
    OUT/gate/         `selectune gate` output (with --criteria): gate.json, evaluation.json, ...
    OUT/update.json   the new version, both models' test metrics on the same rows, the gate verdict

An interrupted update continues with ``--resume``: the split is checked to be identical, training resumes
from its last complete checkpoint, finished steps are not redone, and a version is never registered twice.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selectune.config import ColumnsConfig, ModelConfig, SplitConfig, TrackingConfig, TrainConfig, as_list, with_settings
from selectune.data import load_splits
from selectune.delta import DELTA_CONFIG
from selectune.fingerprint import file_sha256
from selectune.io import atomic_write_bytes, atomic_write_json
from selectune.registry.register import register
from selectune.refs import DEFAULT_REGISTRY, registry_reference
from selectune.registry.store import Registry, RegistryError
from selectune.text_table import table
from selectune.tasks import Task, task_from_metadata
from selectune.tracking import check as check_tracking, log as log_to_mlflow
from selectune.tracking.logs import update_log
from selectune.tracking.mirror import mirror_name


def update(*, from_: str, data: str, out: str, registry: str = "registry", method: str = "bitfit",
           split: SplitConfig = SplitConfig(test_fraction=0.25), training: TrainConfig = TrainConfig(), criteria: str | None = None,
           group_cols: list[str] | None = None, note: str | None = None, resume: bool = False, tracking: TrackingConfig = TrackingConfig(),
           **settings: Any) -> dict[str, Any]:
    """Train the next version of a registered model from version V's state on new DATA; compare, gate, register.

    from_: the registered version to start from: NAME@VERSION, NAME@production or NAME@latest in --registry (or REGISTRY_DIR/NAME@VERSION, the registry the new version is added to)
    data: new labelled data (csv, tsv, jsonl, parquet) with the columns of the model's task
    out: folder for this update's evidence: split/, run/, parent/, gate/, update.json
    registry: registry folder (the version it starts from is in it, and the new version goes into it)
    method: selection method for the update, with options, e.g. bitfit
    criteria: acceptance criteria (YAML) for `selectune gate`: the version records pass/fail and the criteria's sha256
    group_cols: subgroup columns of the test rows, for the gate (a b or a,b)
    note: free text recorded with the version
    resume: continue an interrupted update from where it stopped

    The split (--test, --test-fraction 0.25 of DATA, ...) and the training settings (--epochs, --lr, ...) are those
    of `selectune train`; Python callers may give them flat: ``update(from_="m@1", data=..., out=..., epochs=5)``.
    """
    from selectune.evaluate.run import evaluate
    from selectune.models import merge
    from selectune.train.run import train

    configs = with_settings("update", {"split": split, "training": training, "tracking": tracking}, settings)
    split, training, tracking = (configs[k] for k in ("split", "training", "tracking"))
    _refuse_without_validation(split)
    group_cols = as_list(group_cols, str, "--group-cols")
    target = Path(out)
    registry, from_ = _registry_of(from_, registry)
    with Registry(registry) as reg:
        parent = reg.get(from_)
        parent_delta, root = str(reg.delta_path(parent)), reg.base_path(parent)
    if (target / "update.json").is_file() and resume:
        return json.loads((target / "update.json").read_text())  # finished before: nothing to redo
    if target.exists() and not resume:
        raise FileExistsError(f"output folder {out} already exists; choose another --out, or pass --resume to finish an interrupted update")
    _check_before_training(criteria, tracking)
    task = task_from_metadata(parent.record["task"])
    options = task.options()

    # split once, with the seed; the files are the record of which rows trained and which tested
    splits, files = _split_once(data, task, split, training.seed, target)

    # train from V's state
    run_dir = target / "run"
    if not (run_dir / "metrics.json").is_file():
        columns = ColumnsConfig(label_col=task.label_col, text_col=options["text_col"], feature_cols=options["feature_cols"],
                                task=options["task"], prompt_col=options.get("prompt_col"), response_col=options.get("response_col"))
        train(str(files["train"]), out=str(run_dir), method=method, columns=columns,
              split=SplitConfig(validation=str(files["validation"]), test=str(files["test"])),
              base=ModelConfig(model=root, max_length=options["max_length"]), training=training, init_delta=parent_delta,
              resume=resume and run_dir.with_name("run.checkpoints").is_dir())
    update_metrics = json.loads((run_dir / "metrics.json").read_text())["test"]

    # V on the same test rows; V as a plain model folder is the gate's base
    parent_dir = target / "parent"
    if not parent_dir.is_dir():
        merge(parent_delta, str(parent_dir), model=root)
    parent_metrics = evaluate(str(files["test"]), model=str(parent_dir))["metrics"]
    gate_file = _gate(criteria, parent_dir, run_dir, files, group_cols, training.seed) if criteria else None

    # register V+1 as a child of V (once: a resumed update finds the version it registered)
    delta_id = file_sha256(run_dir / "delta" / DELTA_CONFIG).removeprefix("sha256:")
    with Registry(registry) as reg:
        version = next((v for v in reg.versions(parent.name) if v.delta_id == delta_id), None)
        if version is None:
            version = register(reg, str(run_dir), parent.name, parent=parent.version, gate=gate_file and str(gate_file), note=note,
                               extra={"update": {"from": parent.ref, "out": str(target.resolve()),
                                                 "data": {"path": str(Path(data).resolve()), "sha256": file_sha256(data)},
                                                 "test_rows": {"path": str(files["test"].resolve()), "sha256": file_sha256(files["test"]),
                                                               "n": len(splits.test)},
                                                 "test_metrics": update_metrics, "parent_test_metrics": parent_metrics}})
        elif version.parent != parent.version:
            raise RegistryError(f"this update's delta is already registered as {version.ref} with another parent; nothing was added")
    result = {"version": version.ref, "parent": parent.ref, "method": method, "test_rows": len(splits.test),
              "test": update_metrics, "parent_test": parent_metrics, "gate_passed": version.gate_passed,
              "gate": version.record.get("gate"), "out": str(target)}
    atomic_write_json(target / "update.json", result)
    return _logged(tracking, target, result, registry)


def _refuse_without_validation(split: SplitConfig) -> None:
    if split.validation is None and split.val_fraction == 0:
        raise ValueError("an update is trained with validation rows (its gate chooses thresholds on them, never on test): "
                         "give --val-fraction above 0 or a --validation FILE")


def _check_before_training(criteria: str | None, tracking: TrackingConfig) -> None:
    """A missing or malformed criteria file, or an MLflow server that does not answer, stops the update before any training."""
    if criteria:
        from selectune.evaluate.criteria import load_criteria

        load_criteria(criteria)
    check_tracking(tracking)


def _logged(tracking: TrackingConfig, target: Path, result: dict[str, Any], registry: str) -> dict[str, Any]:
    """With --mlflow-uri: the finished update logged as an MLflow run, and its registry name mirrored (the new version
    added to the MLflow Model Registry). After update.json is written: a failure here leaves the update whole."""
    run_id = log_to_mlflow(tracking, update_log, target)
    if run_id is None:
        return result
    with Registry(registry) as reg:
        mirrored = mirror_name(reg, result["version"].partition("@")[0], tracking.mlflow_uri, tracking.mlflow_experiment)
    return {**result, "mlflow_run_id": run_id, "mlflow_model": mirrored}


def _registry_of(from_: str, registry: str) -> tuple[str, str]:
    """(registry folder, NAME@VERSION): ``--from REGISTRY_DIR/NAME@VERSION`` names the registry itself, which must then
    be --registry's; an update starts from a registered version, so a folder is refused with the way to register it."""
    reference = registry_reference(from_, registry)
    if reference is None:
        if Path(from_).exists():
            raise RegistryError(f"--from {from_} is a folder; an update starts from a registered version: register it with "
                                f"`selectune registry add {from_} --name NAME --registry {registry}`, then give --from NAME@1")
        return registry, from_  # the registry's own reference check names what is wrong with it
    named, ref = reference
    if Path(named).resolve() != Path(registry).resolve() and registry != DEFAULT_REGISTRY:
        raise RegistryError(f"--from {from_} names the registry {named}, but --registry is {registry}; the new version goes into "
                            "the registry of the version it starts from: give one of them")
    return named, ref


def _gate(criteria: str, parent_dir: Path, run_dir: Path, files: dict[str, Path], group_cols: list[str], seed: int) -> Path:
    """`selectune gate` of the update against V (once: a resumed update keeps a finished gate); its gate.json."""
    from selectune.evaluate.gate import gate

    gate_file = run_dir.parent / "gate" / "gate.json"
    if not gate_file.is_file():
        gate(base=str(parent_dir), update=str(run_dir), criteria=criteria, test=str(files["test"]), validation=str(files["validation"]),
             group_cols=",".join(group_cols) or None, seed=seed, out=str(gate_file.parent))
    return gate_file


def _split_once(data: str, task: Task, split: SplitConfig, seed: int, target: Path) -> tuple[Any, dict[str, Path]]:
    """DATA split with the seed into OUT/split/*.csv; a resumed update must make the very same split."""
    splits = load_splits(data, split.validation, split.test, label_col=task.label_col, **task.data_options(), val_fraction=split.val_fraction,
                         test_fraction=split.test_fraction if split.test is None else 0.0, group_col=split.group_col, seed=seed)
    if splits.test is None or not len(splits.test):
        raise ValueError("an update is compared with its parent on test rows: give --test FILE or a --test-fraction above 0")
    files = {role: target / "split" / f"{role}.csv" for role in ("train", "validation", "test")}
    for role, frame in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        content = frame.to_csv(index=False).encode()
        if files[role].is_file() and files[role].read_bytes() != content:
            raise ValueError(f"{files[role]} differs from the split this command makes; the data or settings changed since the "
                             "interrupted update. Start over with a new --out")
        if not files[role].is_file():
            atomic_write_bytes(files[role], content)
    return splits, files


def render(result: dict[str, Any]) -> str:
    keys = [k for k in ("accuracy", "macro_f1", "auroc", "mae", "rmse", "r2") if k in result["test"]]
    rows = [{"model": f"{result['parent']} (parent)", **result["parent_test"]}, {"model": f"{result['version']} ({result['method']})", **result["test"]}]
    gate = {None: "no gate (no --criteria)", True: "gate PASSED", False: "gate FAILED: `registry promote` will refuse it without --override"}
    return "\n".join([f"registered {result['version']} as a child of {result['parent']}; both on the same {result['test_rows']} test rows:",
                      table(rows, ["model", *keys]), gate[result["gate_passed"]]])
