"""Every verb that takes a trained model takes it under any of its four names -- the `train --out` folder, its
delta/, a `selectune merge` folder, a registry reference -- and gives the same answer under each."""
import json
import shutil
from pathlib import Path

import httpx
import pandas as pd
import pytest
from safetensors.torch import load_file

from selectune.cli import main

FORMS = ("run", "delta", "merged", "registry")


@pytest.fixture(scope="module")
def names(gated_tabular_runs, tmp_path_factory):
    """The base and update runs of ``gated_tabular_runs``, each under every name; the update is bc@2 (production)."""
    from selectune.registry.commands import add, promote

    runs = gated_tabular_runs
    out = tmp_path_factory.mktemp("names")
    registry = out / "reg"
    assert main(["merge", str(Path(runs["update"]) / "delta"), str(out / "merged-update")]) == 0
    add(str(Path(runs["base"]) / "model"), name="bc", registry=str(registry))
    add(runs["update"], name="bc", registry=str(registry), parent=1)
    promote("bc@2", registry=str(registry))
    update = {"run": runs["update"], "delta": str(Path(runs["update"]) / "delta"), "merged": str(out / "merged-update"),
              "registry": str(registry / "bc@2"), "production": str(registry / "bc@production")}
    base = {"run": runs["base"], "delta": str(Path(runs["base"]) / "delta"), "merged": str(Path(runs["base"]) / "model"),
            "registry": str(registry / "bc@1")}
    return {**runs, "update_as": update, "base_as": base, "registry": str(registry), "out": out}


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_answer_the_same_under_every_name(names, tmp_path, command):
    answers = {}
    for form, given in names["update_as"].items():
        out = tmp_path / f"{form}.out"
        assert main([command, names["test"], "--delta", given, "--out", str(out)]) == 0, form
        answers[form] = json.loads(out.read_text())["metrics"] if command == "evaluate" else out.read_bytes()
    assert len(answers) == 5 and all(answers[f] == answers["run"] for f in answers), answers
    if command == "evaluate":
        assert 0.5 < answers["run"]["auroc"] <= 1.0
    else:
        assert len(pd.read_csv(tmp_path / "run.out")) == len(pd.read_csv(names["test"]))
    # --model stays what it was: a merged folder on its own, or the base a delta goes on.
    assert main(["evaluate", names["test"], "--model", names["update_as"]["merged"], "--out", str(tmp_path / "m.json")]) == 0
    assert main(["evaluate", names["test"], "--delta", names["update_as"]["registry"], "--model", names["base_as"]["merged"],
                 "--out", str(tmp_path / "b.json")]) == 0
    if command == "evaluate":
        assert json.loads((tmp_path / "m.json").read_text())["metrics"] == answers["run"]
        assert json.loads((tmp_path / "b.json").read_text())["metrics"] == answers["run"]


def test_merge_writes_the_same_weights_from_every_delta_name_and_refuses_a_merged_folder(names, tmp_path, capsys):
    weights = {}
    for form in ("run", "delta", "registry"):
        assert main(["merge", names["update_as"][form], str(tmp_path / form)]) == 0, form
        files = sorted(p.name for p in (tmp_path / form).glob("*.safetensors"))
        weights[form] = {f: load_file(str(tmp_path / form / f)) for f in files}
    reference = weights["run"]
    assert reference and all(weights[f].keys() == reference.keys() for f in weights)
    assert all((weights[f][file][k] == reference[file][k]).all() for f in weights for file in reference for k in reference[file])
    record = json.loads((tmp_path / "registry" / "selectune_merge.json").read_text())
    assert record["registry_ref"] == "bc@2" and record["run"] == str(Path(names["update"]).resolve())
    # A merged folder of a registry version still names its training run.
    from selectune.refs import resolve_trained_model

    assert resolve_trained_model(str(tmp_path / "registry")).run_dir == Path(names["update"]).resolve()
    capsys.readouterr()
    assert main(["merge", names["update_as"]["merged"], str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "is already a merged model" in err and "Traceback" not in err and not (tmp_path / "again").exists()


def _gate_numbers(out: Path) -> dict:
    evaluation = json.loads((out / "evaluation.json").read_text())
    gate = json.loads((out / "gate.json").read_text())
    return {"rows": [(r["id"], r["passed"], r["evidence"]) for r in gate["rows"]], "paired": evaluation["paired_differences"],
            "metrics": {r: evaluation["models"][r]["metrics"] for r in ("base", "update")},
            "thresholds": {r: evaluation["models"][r]["threshold"]["value"] for r in ("base", "update")}}


def test_gate_judges_the_same_under_every_name(names, tmp_path):
    numbers = {}
    pairs = [("run", "run"), ("delta", "delta"), ("merged", "merged"), ("registry", "registry"), ("run", "production")]
    for base_form, update_form in pairs:
        out = tmp_path / f"{base_form}-{update_form}"
        argv = ["gate", "--base", names["base_as"][base_form], "--update", names["update_as"][update_form], "--criteria",
                names["criteria"], "--test", names["test"], "--group-cols", "site", "--min-group-n", "20", "--resamples", "200",
                "--out", str(out)]
        assert main(argv) in (0, 1), (base_form, update_form)
        numbers[(base_form, update_form)] = _gate_numbers(out)
    first = numbers[("run", "run")]
    assert all(n == first for n in numbers.values())
    assert first["metrics"]["update"]["auroc"]["value"] > 0.5
    # The gate's evidence matches what the fixture's own gate (run folders) recorded.
    assert first["rows"] == _gate_numbers(Path(names["gate"]))["rows"]
    identity = json.loads((tmp_path / "registry-registry" / "evaluation.json").read_text())["models"]["update"]["identity"]
    assert identity["kind"] == "delta" and identity["run_config"] is not None
    assert identity["source"].startswith(str(Path(names["registry"]).resolve()))


def test_report_finds_the_training_run_under_every_name(names, tmp_path, capsys):
    texts = {}
    for form, given in names["update_as"].items():
        base = names["base_as"]["registry" if form == "registry" else "delta"]
        assert main(["report", given, "--gate", names["gate"], "--base", base, "--out", str(tmp_path / form)]) == 0, form
        texts[form] = (tmp_path / form / "report.md").read_text()
    assert all(text == texts["run"] for text in texts.values())
    assert "Gate PASSED" in texts["run"] or "Gate FAILED" in texts["run"]
    # A merged folder whose training run is unknown: the report says what it needs.
    orphan = tmp_path / "orphan" / "merged"
    shutil.copytree(names["update_as"]["merged"], orphan)
    (orphan / "selectune_merge.json").unlink()
    capsys.readouterr()
    assert main(["report", str(orphan), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "training run is unknown" in err and "selectune train --out" in err and not (tmp_path / "none").exists()


def test_update_takes_a_registry_prefixed_reference(names, tmp_path, capsys):
    registry = tmp_path / "reg"
    shutil.copytree(names["registry"], registry)
    new = str(Path(names["test"]).with_name("new.csv"))
    common = ["--data", new, "--epochs", "1"]  # the update reads its columns from the parent's task
    assert main(["update", "--from", f"{registry}/bc@production", *common, "--out", str(tmp_path / "u")]) == 0
    result = json.loads((tmp_path / "u" / "update.json").read_text())
    assert (result["version"], result["parent"]) == ("bc@3", "bc@2")
    from selectune.registry.store import Registry

    with Registry(registry) as reg:
        assert [v.ref for v in reg.versions("bc")] == ["bc@1", "bc@2", "bc@3"]
    with Registry(names["registry"]) as reg:  # the registry of the fixture is untouched
        assert [v.ref for v in reg.versions("bc")] == ["bc@1", "bc@2"]
    for argv, expected in [(["--from", f"{registry}/bc@2", "--registry", str(tmp_path / "other")], "but --registry is"),
                           (["--from", names["update"]], "is a folder; an update starts from a registered version")]:
        capsys.readouterr()
        assert main(["update", *argv, *common, "--out", str(tmp_path / "refused")]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and not (tmp_path / "refused").exists()


def test_serve_takes_name_equals_model_and_answers_the_same_for_each(names):
    from selectune.delta import DeltaError
    from selectune.serve import ServeConfig, create_app
    from selectune.serve.in_process import serve_in_thread

    update = names["update_as"]
    deltas = f"run={update['run']},delta={update['delta']},reg={update['production']}"
    app = create_app(ServeConfig(base=names["base_as"]["merged"], deltas=deltas))
    rows = pd.read_csv(names["test"]).head(4)
    features = ["mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness"]
    inputs = rows[features].to_dict(orient="records")
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert sorted(m["name"] for m in client.get("/v1/models").json()["models"]) == ["delta", "reg", "run"]
        answers = {}
        for name in ("run", "delta", "reg"):
            answer = client.post("/v1/predict", json={"model": name, "inputs": inputs})
            assert answer.status_code == 200, answer.text
            answers[name] = answer.json()["predictions"]
    assert answers["run"] == answers["delta"] == answers["reg"] and len(answers["run"]) == 4
    assert main(["predict", names["test"], "--delta", update["run"], "--out", str(names["out"] / "served.csv")]) == 0
    offline = pd.read_csv(names["out"] / "served.csv").head(4)
    assert [p["label"] for p in answers["run"]] == [str(v) for v in offline["prediction"]]
    for deltas, expected in [(f"m={update['merged']}", "is a merged model"), ("bad name=x", "is not NAME=MODEL"),
                             (f"r={names['registry']}/bc@9", "bc@9 does not exist")]:
        with pytest.raises(DeltaError, match=expected):
            create_app(ServeConfig(base=names["base_as"]["merged"], deltas=deltas))


def test_readme_naming_commands_run_as_written(gated_tabular_runs, tmp_path, monkeypatch):
    """The README's "Naming a trained model" block, line by line, on copies of the tabular base and update runs
    (`selectune serve` is built in process instead of listening)."""
    import re
    import shlex

    from selectune.cli import build_parser
    from selectune.serve import ServeConfig, create_app

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Naming a trained model")[1].split("\n## ")[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    for name in ("base", "update"):
        shutil.copytree(gated_tabular_runs[name], tmp_path / "runs" / name)
    (tmp_path / "data" / "bc").mkdir(parents=True)
    shutil.copy(gated_tabular_runs["test"], tmp_path / "data" / "bc" / "new.csv")
    lines = [shlex.split(line.split("  #")[0]) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert len(lines) == 10 and lines[-1][:2] == ["selectune", "serve"]
    for argv in lines[:-1]:
        assert main(argv[1:]) == 0, argv
    metrics = [json.loads((tmp_path / "runs" / f"eval-{form}.json").read_text())["metrics"] for form in FORMS]
    assert all(m == metrics[0] for m in metrics) and 0.5 < metrics[0]["auroc"] <= 1.0
    assert len(pd.read_csv(tmp_path / "runs" / "predictions.csv")) == len(pd.read_csv(gated_tabular_runs["test"]))
    args = build_parser(lines[-1][1:]).parse_args(lines[-1][1:])
    state = create_app(ServeConfig(base=args.base, deltas=args.deltas)).state.serve
    assert sorted(state.routes) == ["production", "update"] and not state.refused
    assert state.routes["production"].version == state.routes["update"].version  # the same weights file
