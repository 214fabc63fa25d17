"""evaluation.json and gate.json as typed models: the shipped JSON Schemas match the models, a real gate's files
parse and dump back byte for byte, and a damaged file is refused with the field that is wrong."""
import json
import shutil
from pathlib import Path

import pytest

from selectune.cli import main
from selectune.evaluate.records import SCHEMA_DIR, SCHEMA_FILES, Evaluation, GateRecord, json_schema


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_shipped_schema_is_the_models_schema(name):
    # regenerate with: python -m selectune.evaluate.records
    assert (SCHEMA_DIR / name).read_text() == json_schema(SCHEMA_FILES[name])


def test_schema_files_are_package_data():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert "schemas/*.json" in pyproject["tool"]["setuptools"]["package-data"]["selectune"]
    assert any(d.startswith("pydantic") for d in pyproject["project"]["dependencies"])


def test_a_real_gate_run_validates_and_dumps_back_byte_for_byte(gated_tabular_runs):
    gate = Path(gated_tabular_runs["gate"])
    evaluation_bytes, gate_bytes = (gate / "evaluation.json").read_bytes(), (gate / "gate.json").read_bytes()
    evaluation = Evaluation.model_validate_json(evaluation_bytes)
    record = GateRecord.model_validate_json(gate_bytes)
    assert evaluation.dump_json() == evaluation_bytes  # no key added, dropped or reformatted by the model
    assert json.loads(record.dump_json()) == json.loads(gate_bytes)
    saved = json.loads(gate_bytes)
    assert saved["schema"] == "selectune-gate/1" and "exit_code" not in saved and isinstance(saved["passed"], bool)
    assert json.loads(evaluation_bytes)["schema"] == "selectune-evaluation/1"
    assert record.passed == all(row.passed for row in record.rows) and len(record.rows) == 4
    assert record.update.delta_weights_sha256 == evaluation.models["update"].identity.delta_weights_sha256
    site = {row.group: row for row in evaluation.subgroups["site"]}
    assert site["tiny"].small and site["tiny"].n < 20 and not site["north"].small
    assert evaluation.models["update"].threshold.validation["source"] == "validation split of the training run"
    assert evaluation.models["base"].curves.calibration.bins == 10 and evaluation.task.kind == "tabular-classification"


@pytest.mark.parametrize("damage,where", [
    (lambda r: r["rows"][0].pop("evidence"), "rows.0.evidence"),
    (lambda r: r.update(passed="yes"), "passed"),
    (lambda r: r.update(surprise=1), "surprise"),
])
def test_a_damaged_gate_file_is_refused_with_the_field(gated_tabular_runs, tmp_path, capsys, damage, where):
    gate = tmp_path / "gate"
    shutil.copytree(gated_tabular_runs["gate"], gate)
    record = json.loads((gate / "gate.json").read_text())
    damage(record)
    (gate / "gate.json").write_text(json.dumps(record))
    assert main(["report", gated_tabular_runs["update"], "--gate", str(gate), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert "gate.json is not a file this selectune reads" in err and f"first at {where}:" in err
    assert not (tmp_path / "report").exists()
