"""The README's two founding uses, each run command by command exactly as written: lung cancer (a categorical GENDER,
base on older patients, BitFit update on newer ones, gate with GENDER and age-band subgroups, report) and diabetes
(the Pima zeros as missing values, imputed; base -> update -> promote -> rollback)."""
import contextlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest

from selectune.cli import main
from selectune.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SECTION = README.split("## Clinical tables: missing values and categories")[1].split("\n## ")[0]


def walkthrough(title: str) -> list[str]:
    """The commands of the plain code block under ``### {title}``, continuation lines joined, comments dropped."""
    part = SECTION.split(f"### {title}")[1].split("\n### ")[0]
    block = re.findall(r"```\n(.*?)```", part, flags=re.S)[0]
    return [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def run_line(line: str) -> str:
    """``selectune ...`` as the shell would run it (train and update without the progress bar); its stdout."""
    command = shlex.split(line)
    assert command[0] == "selectune", line
    quiet = ["--no-progress"] if command[1] in ("train", "update") else []
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = main(command[1:] + quiet)
    assert code == 0, f"`{line}` exited {code}:\n{captured.getvalue()}"
    return captured.getvalue()


def run_as_written(lines: list[str], folder: Path) -> list[tuple[str, str]]:
    shutil.copytree(ROOT / "examples", folder / "examples")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        return [(line, run_line(line)) for line in lines]


def test_lung_cancer_walkthrough_runs_as_written(tmp_path):
    lines = walkthrough("Lung cancer: diagnosis support updated with new patients")
    assert [shlex.split(line)[1] for line in lines] == ["data", "train", "train", "gate", "report"]
    run_as_written(lines, tmp_path)
    runs = tmp_path / "runs" / "lung"
    base = json.loads((runs / "base" / "model" / "config.json").read_text())["preprocessing"]
    assert base["categories"] == {"GENDER": ["F", "M"]} and base["impute"] is None
    update = json.loads((runs / "update" / "delta" / "delta_config.json").read_text())
    assert update["metadata"]["task"]["preprocessing"] == base  # the update read GENDER as its base does
    assert update["selection"]["method"] == "bitfit"
    gate = json.loads((runs / "gate" / "gate.json").read_text())
    assert gate["passed"] is True
    assert [row["id"] for row in gate["rows"]] == ["discrimination-non-inferior", "cancers-found", "no-gender-worse", "no-age-band-worse"]
    evaluation = json.loads((runs / "gate" / "evaluation.json").read_text())
    assert evaluation["data"]["test"]["rows"] == 69
    subgroups = json.dumps(evaluation["subgroups"])
    for level in ('"F"', '"M"', '"<60"', '"60-69"', '"70+"'):
        assert level in subgroups, level
    report = (runs / "report" / "report.md").read_text()
    assert "Gate PASSED (4 of 4 criteria met)" in report and "| group columns | GENDER, AGE_BAND |" in report
    assert (runs / "report" / "report.html").is_file()


def test_diabetes_walkthrough_imputes_the_pima_zeros_and_rolls_back(tmp_path):
    lines = walkthrough("Diabetes: risk prediction updated as care changes")
    outputs = run_as_written(lines, tmp_path)
    old = pd.read_csv(tmp_path / "data" / "pima" / "old.csv")
    assert old["Insulin"].isna().sum() > 100 and not (old[["Glucose", "BMI"]] == 0).any().any()  # zeros are missing now
    prep = json.loads((tmp_path / "runs" / "pima" / "base" / "model" / "config.json").read_text())["preprocessing"]
    assert prep["impute"] == "median" and {"Insulin", "SkinThickness", "BloodPressure"} <= set(prep["indicators"])
    assert "Pregnancies" not in prep["indicators"]  # never missing: a 0 there is a real count
    with Registry(str(tmp_path / "runs" / "pima" / "registry")) as reg:
        assert [v.version for v in reg.versions("pima-risk")] == [1, 2]
        assert reg.alias("pima-risk", "production") == 1  # promoted 1, then 2, then rolled back
        assert reg.get("pima-risk@2").gate_passed is True
        assert reg.events("pima-risk")[-1]["reason"] == "the new protocol was withdrawn"
    predictions = pd.read_csv(tmp_path / "runs" / "pima" / "newer-predictions.csv")
    assert len(predictions) == 192 and predictions["Insulin"].isna().any() and predictions["prediction"].notna().all()
    assert "gate PASSED" in dict(outputs)[lines[4]]
