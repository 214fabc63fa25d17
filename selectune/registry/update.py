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

from selectune.data import load_splits
from selectune.delta import DELTA_CONFIG, atomic_write_bytes, atomic_write_json, file_sha256
from selectune.registry.register import register
from selectune.registry.store import Registry, RegistryError
from selectune.tasks import task_from_metadata


def update(*, from_: str, data: str, out: str, registry: str = "registry", method: str = "bitfit", test: str | None = None,
           validation: str | None = None, test_fraction: float = 0.25, val_fraction: float = 0.15, group_col: str | None = None,
           lr: float | None = None, new_lr: float = 1e-2, epochs: int = 3, batch_size: int = 32, weight_decay: float = 0.0,
           warmup_ratio: float = 0.1, seed: int = 0, metric: str | None = None, patience: int | None = None,
           class_weight: str | None = None, criteria: str | None = None, group_cols: str | None = None,
           note: str | None = None, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train the next version of a registered model from version V's state on new DATA; compare, gate, register.

    from_: the version to start from: NAME@VERSION, or NAME@production
    data: new labelled data (csv, tsv, jsonl, parquet) with the columns of the model's task
    out: folder for this update's evidence: split/, run/, parent/, gate/, update.json
    registry: registry folder
    method: selection method for the update, with options, e.g. bitfit
    test: test file; default: --test-fraction of DATA, split off with --seed
    validation: validation file; default: --val-fraction of DATA
    test_fraction: fraction of DATA held out as test rows when --test is not given
    val_fraction: fraction of DATA held out for validation when --validation is not given
    group_col: patient/group id column: all rows of a group stay in one split
    lr: learning rate (default: the method's)
    new_lr: learning rate of new parameters when pretrained ones train too
    epochs: training epochs
    batch_size: examples per optimizer step
    weight_decay: AdamW weight decay on matrices
    warmup_ratio: fraction of steps with linear warmup
    seed: seed for the split, training and shuffling
    metric: validation metric for keep-best/early stopping
    patience: stop after this many epochs without validation improvement
    class_weight: `balanced` weights the loss by inverse class frequency
    criteria: acceptance criteria (YAML) for `selectune gate`: the version records pass/fail and the criteria's sha256
    group_cols: comma-separated subgroup columns of the test rows, for the gate
    note: free text recorded with the version
    resume: continue an interrupted update from where it stopped
    progress: show the progress bar
    """
    from selectune.evaluate.run import evaluate
    from selectune.models import merge
    from selectune.train.run import train

    target = Path(out)
    with Registry(registry) as reg:
        parent = reg.get(from_)
        parent_delta, root = str(reg.delta_path(parent)), reg.base_path(parent)
    if (target / "update.json").is_file() and resume:
        return json.loads((target / "update.json").read_text())  # finished before: nothing to redo
    if target.exists() and not resume:
        raise FileExistsError(f"output folder {out} already exists; choose another --out, or pass --resume to finish an interrupted update")
    if criteria:
        from selectune.evaluate.criteria import load_criteria

        load_criteria(criteria)  # a missing or malformed criteria file stops the update before any training
    task = task_from_metadata(parent.record["task"])
    options = task.options()

    # split once, with the seed; the files are the record of which rows trained and which tested
    splits = load_splits(data, validation, test, label_col=task.label_col, **task.data_options(),
                         val_fraction=val_fraction, test_fraction=test_fraction if test is None else 0.0,
                         group_col=group_col, seed=seed)
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

    # train from V's state
    run_dir = target / "run"
    if not (run_dir / "metrics.json").is_file():
        train(str(files["train"]), model=root, out=str(run_dir), method=method, label_col=task.label_col, text_col=options["text_col"],
              feature_cols=",".join(options["feature_cols"]) or None, task=options["task"], validation=str(files["validation"]), test=str(files["test"]),
              lr=lr, new_lr=new_lr, epochs=epochs, batch_size=batch_size, max_length=options["max_length"], weight_decay=weight_decay,
              warmup_ratio=warmup_ratio, seed=seed, metric=metric, patience=patience, class_weight=class_weight,
              init_delta=parent_delta, resume=resume and run_dir.with_name("run.checkpoints").is_dir(), progress=progress)
    update_metrics = json.loads((run_dir / "metrics.json").read_text())["test"]

    # V on the same test rows; V as a plain model folder is the gate's base
    parent_dir = target / "parent"
    if not parent_dir.is_dir():
        merge(parent_delta, str(parent_dir), model=root)
    parent_metrics = evaluate(str(files["test"]), model=str(parent_dir))["metrics"]
    gate_file = None
    if criteria:
        from selectune.evaluate.gate import gate

        gate_file = target / "gate" / "gate.json"
        if not gate_file.is_file():
            gate(base=str(parent_dir), update=str(run_dir), criteria=criteria, test=str(files["test"]), validation=str(files["validation"]),
                 group_cols=group_cols, seed=seed, out=str(gate_file.parent))

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
    return result


def render(result: dict[str, Any]) -> str:
    from selectune.cli import table

    keys = [k for k in ("accuracy", "macro_f1", "auroc", "mae", "rmse", "r2") if k in result["test"]]
    rows = [{"model": f"{result['parent']} (parent)", **result["parent_test"]}, {"model": f"{result['version']} ({result['method']})", **result["test"]}]
    gate = {None: "no gate (no --criteria)", True: "gate PASSED", False: "gate FAILED: `registry promote` will refuse it without --override"}
    return "\n".join([f"registered {result['version']} as a child of {result['parent']}; both on the same {result['test_rows']} test rows:",
                      table(rows, ["model", *keys]), gate[result["gate_passed"]]])


update.render = render
