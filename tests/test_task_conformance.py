"""Every registered task x its tiny example: train one epoch -> delta round trip -> merge -> predict = serve ->
gate -> report. The tasks are read from the registry: registering a task (with its ``write_example``) adds it
here with no new test code.

Plus a source check: no stage outside ``selectune/tasks/`` branches on what kind of task it has.
"""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from selectune.delta import read_delta
from selectune.evaluate.gate import gate
from selectune.evaluate.run import evaluate, predict
from selectune.models import TASK_FILE, merge
from selectune.report.build import report
from selectune.serve import ServeConfig, create_app
from selectune.serve.in_process import serve_in_thread
from selectune.tasks import TASKS, InputError, InputLimits, Task, task_from_metadata
from selectune.train.run import train

PACKAGE = Path(__file__).resolve().parents[1] / "selectune"


@pytest.fixture(scope="module", params=list(TASKS))
def trained(request, tmp_path_factory):
    """(task class, its example, the run folder, train's summary): one epoch of the task's own example."""
    cls = TASKS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    example = cls.write_example(folder)
    summary = train(example.train, validation=example.validation, test=example.test, out=str(folder / "run"), epochs=1,
                    seed=0, checkpoint=False, progress=False, **example.train_options)
    return cls, example, folder / "run", summary


def _base_of(delta: Path) -> str:
    """The base the delta was trained on: the recorded model, or (a base built from scratch) model/ beside it."""
    recorded = read_delta(delta)[1]["metadata"]["base_model"]
    return recorded if Path(recorded).is_dir() else str(delta.parent / "model")


def test_train_one_epoch_writes_a_delta_that_names_its_task(trained):
    cls, example, run, summary = trained
    assert summary["best_epoch"] == 1 and summary["test"]["n"] == len(pd.read_csv(example.test))
    _, config = read_delta(run / "delta")
    meta = config["metadata"]["task"]
    assert meta["kind"] == cls.name
    task = task_from_metadata(meta)
    assert type(task) is cls and task.metadata() == meta  # metadata -> task -> metadata is exact
    assert json.loads((run / "run_config.json").read_text())["task"] == cls.name
    # the loader reported what was new, and those tensors trained and went into the delta
    selection = config["selection"]
    assert set(selection["new_parameters"]) <= set(selection["trainable"])


def test_delta_round_trip_on_a_fresh_base_reproduces_the_test_metrics(trained):
    cls, example, run, summary = trained
    again = evaluate(example.test, delta=str(run / "delta"), model=_base_of(run / "delta"))["metrics"]
    for name, value in summary["test"].items():
        if name != "loss" and value is not None and np.isfinite(value):
            assert again[name] == pytest.approx(value, abs=1e-5), name


def test_merged_model_predicts_what_the_delta_on_its_base_predicts(trained, tmp_path):
    cls, example, run, _ = trained
    merged = merge(str(run / "delta"), str(tmp_path / "merged"), model=_base_of(run / "delta"))
    assert task_from_metadata(json.loads((Path(merged) / TASK_FILE).read_text())).metadata() == \
        read_delta(run / "delta")[1]["metadata"]["task"]
    on_base = pd.read_csv(predict(example.test, out=str(tmp_path / "delta.csv"), delta=str(run / "delta"), model=_base_of(run / "delta")))
    plain = pd.read_csv(predict(example.test, out=str(tmp_path / "merged.csv"), model=merged))
    assert list(plain.columns) == list(on_base.columns) and "prediction" in plain.columns
    for column in plain.columns:
        if pd.api.types.is_float_dtype(plain[column]):
            assert np.allclose(plain[column], on_base[column], atol=1e-5), column
        else:
            assert plain[column].tolist() == on_base[column].tolist(), column


def test_predict_equals_the_served_answer(trained, tmp_path):
    cls, example, run, _ = trained
    if not cls.served:
        # a task the server cannot answer for yet (causal-lm until /v1/generate) refuses a request with a clear 4xx
        task = task_from_metadata(read_delta(run / "delta")[1]["metadata"]["task"])
        with pytest.raises(InputError, match="not served") as refused:
            task.encode_request(example.request_inputs, InputLimits(), None)
        assert 400 <= refused.value.status < 500
        return
    deltas = tmp_path / "deltas"
    shutil.copytree(run / "delta", deltas / "site" / "delta")  # a train run's delta/ serves as it is
    offline = pd.read_csv(predict(example.test, out=str(tmp_path / "p.csv"), delta=str(run / "delta"), model=_base_of(run / "delta")))
    n = len(example.request_inputs)
    app = create_app(ServeConfig(base=_base_of(run / "delta"), deltas=str(deltas)))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        answer = client.post("/v1/predict", json={"model": "site", "inputs": example.request_inputs})
        assert answer.status_code == 200, answer.text
        served = answer.json()["predictions"]
        refused = client.post("/v1/predict", json={"model": "site", "inputs": [None]})
        assert refused.status_code == 422, refused.text
    assert len(served) == n
    for i, prediction in enumerate(served):
        # every field the server answers with matches the offline row: the label or value, and per-class scores
        if "value" in prediction:
            assert prediction["value"] == pytest.approx(offline.loc[i, "prediction"], abs=1e-5)
        else:
            assert prediction["label"] == str(offline.loc[i, "prediction"])
        for label, p in prediction.get("probabilities", {}).items():
            assert p == pytest.approx(offline.loc[i, f"prob_{label}"], abs=1e-5)


def test_gate_and_report_run_and_write_their_files(trained, tmp_path):
    cls, example, run, _ = trained
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text(example.criteria)
    result = gate(base=str(run), update=str(run), criteria=str(criteria), test=example.test, out=str(tmp_path / "gate"),
                  resamples=100)
    assert result["passed"] and len(result["rows"]) == len(example.criteria.strip().splitlines()) - 1
    for name in ("gate.json", "evaluation.json", "criteria.yaml", "predictions.csv"):
        assert (tmp_path / "gate" / name).is_file(), name
    evaluation = json.loads((tmp_path / "gate" / "evaluation.json").read_text())
    assert evaluation["task"]["kind"] == cls.name
    report(str(run), out=str(tmp_path / "report"), gate=str(tmp_path / "gate"))
    for name in ("report.html", "report.md"):
        assert (tmp_path / "report" / name).stat().st_size > 1000, name
    assert cls.name in (tmp_path / "report" / "report.md").read_text()


# ---- source check: stages ask the task, they never branch on its kind ---------------------------------------

FORBIDDEN_NAMES = {"is_tabular_model_dir", "is_classification"}


def task_kind_branches(source: str, task_names: set[str]) -> list[str]:
    """Places in ``source`` that decide by what kind of task they hold: a task name (or ``tabular-...``) as a string
    literal, ``.kind`` read off a task, a comparison with ``kind``, or a kind-testing helper."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in task_names or node.value.startswith(("tabular-", "text-classification")):
                found.append(f"{where}: task name {node.value!r} as a string")
        elif isinstance(node, ast.Attribute) and node.attr == "kind" and "task" in ast.unparse(node.value).lower():
            found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.Compare) and any(isinstance(side, ast.Name) and side.id == "kind"
                                                   for side in [node.left, *node.comparators]) \
                and any(isinstance(side, ast.Constant) and side.value in task_names for side in [node.left, *node.comparators]):
            found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, (ast.Name, ast.Attribute)) and getattr(node, "id", getattr(node, "attr", None)) in FORBIDDEN_NAMES:
            found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and any(a.name in FORBIDDEN_NAMES for a in node.names):
            found.append(f"{where}: imports {[a.name for a in node.names]}")
    return found


def test_no_task_kind_branching_outside_tasks():
    names = set(TASKS)
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "tasks" in path.relative_to(PACKAGE).parts[:1]:
            continue
        found = task_kind_branches(path.read_text(), names)
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert not offenders, f"ask the task instead of branching on its kind: {offenders}"


@pytest.mark.parametrize("snippet", [
    'kind = "text-classification" if text_col else f"tabular-{task}"',
    'if task.kind == "tabular-regression":\n    pass',
    'wanted = "text" if self.task.kind == "x" else "tabular"',
    "from selectune.train.tabular import is_tabular_model_dir",
    "if task.is_classification:\n    pass",
    'if kind == "tabular-classification":\n    pass',
])
def test_the_source_check_catches_the_branches_it_forbids(snippet):
    assert task_kind_branches(snippet, set(TASKS)), snippet


def test_the_source_check_leaves_other_kinds_alone():
    # a ModelSource's kind (run/delta/merged) and a contender's kind (selective/peft) are not task kinds
    assert task_kind_branches('source.kind == "run"\ncontender.kind == "peft"\nparam.kind == param.X\n"selectune-tabular-mlp"', set(TASKS)) == []


def test_every_task_implements_the_whole_interface():
    for name, cls in TASKS.items():
        assert issubclass(cls, Task) and cls.name == name
        assert not getattr(cls, "__abstractmethods__", None), (name, cls.__abstractmethods__)
