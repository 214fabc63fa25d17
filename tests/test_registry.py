"""The registry: the README's lifecycle run command by command, promote/rollback rules, integrity refusals,
continual updates that stack onto their parent, and the resolve() a server uses."""
import contextlib
import io
import json
import re
import shlex
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch

from selectune.cli import main
from selectune.delta import DELTA_WEIGHTS, read_delta
from selectune.evaluate.run import evaluate
from selectune.models import load_with_delta
from selectune.registry import Registry, RegistryError, RegistryIntegrityError, resolve, resolve_version

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SECTION = README.split("## Versions: update, gate, promote, rollback")[1].split("\n## ")[0]
FEATURES = "Pregnancies,Glucose,BloodPressure,SkinThickness,Insulin,BMI,DiabetesPedigreeFunction,Age"


def readme_commands() -> list[str]:
    block = re.findall(r"```bash\n(.*?)```", SECTION, flags=re.S)[0]
    return [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def run(*argv) -> int:
    return main([str(a) for a in argv])


def ok(*argv) -> None:
    assert run(*argv) == 0, argv


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    """The README's commands, run in order in a fresh folder; returns (folder, stdout of each command)."""
    folder = tmp_path_factory.mktemp("lifecycle")
    criteria = re.findall(r"```yaml\n(.*?)```", SECTION, flags=re.S)[0]
    (folder / "criteria.yaml").write_text(criteria)
    outputs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for line in readme_commands():
            assert line.startswith("selectune "), line
            argv = shlex.split(line)[1:]
            if argv[0] in ("train", "update"):
                argv.append("--no-progress")
            captured = io.StringIO()
            with contextlib.redirect_stdout(captured):
                code = main(argv)
            assert code == 0, f"`{line}` exited {code}:\n{captured.getvalue()}"
            outputs.append((line, captured.getvalue()))
    return folder, outputs


def test_readme_lifecycle_runs_and_leaves_the_recorded_state(lifecycle):
    folder, outputs = lifecycle
    assert len(outputs) == 12
    with Registry(folder / "registry") as reg:
        versions = reg.versions("diabetes-risk")
        assert [(v.version, v.parent, v.record["method"]) for v in versions] == [(1, None, "base"), (2, 1, "bitfit"), (3, 2, "bitfit")]
        assert reg.alias("diabetes-risk", "production") == 2  # promoted 1, 2, 3, then rolled back one step
        assert [(e["action"], e["version"], e["previous"]) for e in reg.events("diabetes-risk")] == [
            ("promote", 1, None), ("promote", 2, 1), ("promote", 3, 2), ("rollback", 2, 3)]
        assert reg.events("diabetes-risk")[-1]["reason"] == "drift alarm on the new site"
        v1, v2, v3 = versions
        assert v1.gate_passed is None and v2.gate_passed is True and v3.gate_passed is True
        assert v2.record["gate"]["criteria_sha256"] == v3.record["gate"]["criteria_sha256"]
        assert v2.record["gate"]["criteria_sha256"].startswith("sha256:")
        # v1 is the base model itself (an empty delta on a copy in the registry); v2 and v3 are biases only
        assert read_delta(reg.delta_path(v1))[0] == {}
        for version in (v2, v3):
            tensors, config = read_delta(reg.delta_path(version))
            assert tensors and all(n.endswith(".bias") for n in tensors)
            assert config["selection"]["base_fingerprint"] == v1.base_fingerprint  # every version: one delta on the same base
            update = version.record["update"]
            assert update["test_metrics"]["n"] == update["parent_test_metrics"]["n"] == update["test_rows"]["n"] == 48
            assert update["data"]["sha256"].startswith("sha256:") and version.record["data"]["train"]["sha256"].startswith("sha256:")
        assert v2.record["update"]["data"]["path"].endswith("new.csv") and v3.record["update"]["data"]["path"].endswith("newer.csv")
        assert reg.verify() == []
    # v3's record of its parent on the shared test rows is what v2, loaded from the registry, scores there
    recorded = json.loads((folder / "runs" / "v3" / "update.json").read_text())["parent_test"]
    _, delta, base = resolve_version(folder / "registry", "diabetes-risk@2")
    again = evaluate(str(folder / "runs" / "v3" / "split" / "test.csv"), delta=str(delta), model=base)["metrics"]
    assert again == recorded and again["n"] == 48


def test_history_shows_the_table_the_lineage_and_each_gate(lifecycle):
    folder, outputs = lifecycle
    text = dict(outputs)["selectune registry history diabetes-risk"]
    lines = text.splitlines()
    assert lines[0].endswith("3 version(s), production v2")
    table = {line.split()[0]: line for line in lines[:lines.index("lineage:")] if re.match(r"v\d ", line)}
    assert "base" in table["v1"] and " - " in table["v1"] and "old.csv" in table["v1"]
    assert "bitfit" in table["v2"] and "PASS" in table["v2"] and "new.csv" in table["v2"] and "<- production" in table["v2"]
    assert "PASS" in table["v3"] and "newer.csv" in table["v3"]
    lineage = lines[lines.index("lineage:") + 1:lines.index("lineage:") + 4]
    assert lineage == ["v1 base  gate -", "└── v2 bitfit  gate PASS  [production]", "    └── v3 bitfit  gate PASS"]
    assert "rollback to v2 (from v3)  reason: drift alarm on the new site" in text


def test_exported_production_delta_evaluates_like_the_registry_version(lifecycle):
    folder, outputs = lifecycle
    exported = folder / "runs" / "production"
    record = json.loads((exported / "registry_version.json").read_text())
    assert record["ref"] == "diabetes-risk@2"
    assert (exported / DELTA_WEIGHTS).read_bytes() == (resolve(folder / "registry", "diabetes-risk@production") / DELTA_WEIGHTS).read_bytes()
    printed = json.loads(dict(outputs)["selectune evaluate data/diabetes/newer.csv --delta runs/production"])
    assert printed["metrics"]["n"] == 192 and printed["metrics"]["accuracy"] > 0.7


def test_resolve_gives_a_server_the_verified_production_delta(lifecycle):
    folder, _ = lifecycle
    version, delta, base = resolve_version(folder / "registry", "diabetes-risk@production")
    assert version.ref == "diabetes-risk@2" and delta == resolve(folder / "registry", "diabetes-risk")
    assert Path(base).is_dir() and Path(base).is_relative_to(folder / "registry" / "models")
    net, task, _ = load_with_delta(str(delta), base)
    assert task.label_col == "Outcome"


@pytest.fixture()
def copy_of(lifecycle, tmp_path):
    """A private copy of the lifecycle's registry, to change freely."""
    import shutil

    folder, _ = lifecycle
    shutil.copytree(folder / "registry", tmp_path / "registry")
    return tmp_path / "registry"


def test_a_delta_whose_bytes_changed_is_refused_everywhere(copy_of, capsys, tmp_path):
    with Registry(copy_of) as reg:
        v2 = reg.get("diabetes-risk@2")
        weights = reg.delta_path(v2) / DELTA_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-3] ^= 1  # one bit of one stored float
    weights.write_bytes(bytes(data))
    with pytest.raises(RegistryIntegrityError, match="does not match the hash recorded at registration"):
        resolve(copy_of, "diabetes-risk@production")
    assert resolve(copy_of, "diabetes-risk@3")  # the other versions still load
    for argv in (["registry", "show", "diabetes-risk@2"], ["registry", "export", "diabetes-risk@2", tmp_path / "out"],
                 ["update", "--from", "diabetes-risk@2", "--data", "x.csv", "--out", tmp_path / "u"]):
        capsys.readouterr()
        assert run(*argv, "--registry", copy_of) == 2
        err = capsys.readouterr().err
        assert "does not match the hash recorded at registration" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "u").exists()
    assert run("registry", "verify", "--registry", copy_of) == 1
    assert "diabetes-risk@2" in capsys.readouterr().out


def test_promote_refuses_a_failed_gate_unless_overridden_and_rollback_is_a_stack(copy_of, capsys):
    with Registry(copy_of) as reg:
        reg.connection.execute("UPDATE versions SET gate_passed = 0 WHERE version = 3")  # as if v3 had failed its gate
        with pytest.raises(RegistryError, match="failed its gate"):
            reg.promote("diabetes-risk@3")
        assert reg.alias("diabetes-risk", "production") == 2
        reg.promote("diabetes-risk@3", override="the failing criterion is under review; clinical lead approved")
        assert reg.events("diabetes-risk")[-1]["reason"].startswith("the failing criterion")
        with pytest.raises(RegistryError, match="already in production"):
            reg.promote("diabetes-risk@3")
        # production so far: 1, 2, (3 rolled back), 3 -> rollbacks walk back 3 -> 2 -> 1, then stop
        assert [reg.rollback("diabetes-risk").version for _ in range(2)] == [2, 1]
        with pytest.raises(RegistryError, match="no earlier production version"):
            reg.rollback("diabetes-risk")
        assert reg.verify() == []
    capsys.readouterr()
    assert run("registry", "history", "diabetes-risk", "--registry", copy_of) == 0
    out = capsys.readouterr().out
    assert "v3 bitfit  gate FAIL (override)" in out and "override: the failing criterion" in out


def test_bad_requests_are_refused_with_the_fix(copy_of, lifecycle, tmp_path, capsys):
    folder, _ = lifecycle
    cases = [
        (["registry", "history", "nope"], "no model named 'nope'"),
        (["registry", "show", "diabetes-risk@9"], "diabetes-risk@9 does not exist"),
        (["registry", "show", "diabetes-risk@@"], "not a version reference"),
        (["registry", "promote", "diabetes-risk@2"], "already in production"),
        (["registry", "add", folder / "runs" / "v2" / "run", "--name", "diabetes-risk"], "already registered as diabetes-risk@2"),
        (["registry", "add", folder / "runs" / "base" / "delta", "--name", "x"], "register that model as the first version"),
        (["registry", "add", folder / "runs" / "v2" / "run", "--name", "bad@name"], "must be non-empty without '@'"),
        (["registry", "add", folder / "runs" / "v2" / "run", "--name", "y", "--gate", folder / "criteria.yaml"], "cannot read the gate"),
        (["update", "--from", "diabetes-risk@1", "--data", folder / "data" / "diabetes" / "new.csv", "--out", folder / "runs" / "v2"],
         "already exists"),
    ]
    before = sqlite3.connect(copy_of / "registry.sqlite").execute("SELECT COUNT(*) FROM versions").fetchone()
    for argv, expected in cases:
        capsys.readouterr()
        assert run(*argv, "--registry", copy_of) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (argv, err)
    assert sqlite3.connect(copy_of / "registry.sqlite").execute("SELECT COUNT(*) FROM versions").fetchone() == before
    assert run("registry", "history", "x", "--registry", tmp_path / "none") == 2
    assert "no registry at" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert run("registry", "add", tmp_path / "missing", "--name", "x", "--registry", tmp_path / "none") == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_text_update_stacks_onto_its_parent(tiny_bert_dir, tiny_text_csvs, tmp_path):
    """A BitFit delta on a text model, then `update` with a sparse method: the stored delta is the union against
    the same base, and base + stored delta reproduces exactly the model the update trained."""
    train_csv, test_csv = tiny_text_csvs
    ok("train", train_csv, "--test", test_csv, "--model", tiny_bert_dir, "--text-col", "text", "--label-col", "label",
       "--epochs", "1", "--batch-size", "8", "--out", tmp_path / "v1", "--no-progress")
    ok("registry", "add", tmp_path / "v1", "--name", "reviews", "--registry", tmp_path / "reg")
    ok("update", "--from", "reviews@1", "--data", train_csv, "--test", test_csv, "--method", "random:budget=40", "--epochs", "1",
       "--batch-size", "8", "--out", tmp_path / "v2", "--registry", tmp_path / "reg", "--no-progress")
    v1_tensors, _ = read_delta(tmp_path / "v1" / "delta")
    version, delta, base = resolve_version(tmp_path / "reg", "reviews@2")
    tensors, config = read_delta(delta)
    trained = set(config["metadata"]["init_delta"]["trained_in_update"])
    assert set(tensors) == set(v1_tensors) | trained  # v1's biases + classifier, and what v2 trained (masked weights, biases)
    assert config["selection"]["masked"] and set(config["selection"]["masked"]) <= trained - set(v1_tensors)
    assert config["selection"]["new_parameters"] == ["classifier.bias", "classifier.weight"]  # random in the base: excluded from its fingerprint
    assert config["metadata"]["init_delta"]["weights_sha256"] == version.record["init_delta"]["weights_sha256"]
    # entries v2 did not train keep v1's values
    untouched = [n for n in v1_tensors if n not in trained]
    assert all(torch.equal(tensors[n], v1_tensors[n]) for n in untouched)
    # base + stored delta is exactly the model the update trained: same test metrics as its run recorded
    recorded = json.loads((tmp_path / "v2" / "run" / "metrics.json").read_text())["test"]
    again = evaluate(test_csv, delta=str(delta), model=base)["metrics"]
    assert version.parent == 1 and again["n"] == len(pd.read_csv(test_csv)) == recorded["n"]
    shared = sorted(set(again) & set(recorded) - {"n"})
    assert "auroc" in shared and {k: again[k] for k in shared} == pytest.approx({k: recorded[k] for k in shared}, abs=1e-9)


def test_an_update_that_fails_its_gate_is_registered_but_not_promoted(copy_of, lifecycle, tmp_path, capsys):
    folder, _ = lifecycle
    strict = tmp_path / "strict.yaml"
    strict.write_text("criteria:\n  - {id: big-gain, metric: auroc, rule: superior, margin: 0.3}\n")
    ok("update", "--from", "diabetes-risk@3", "--data", folder / "data" / "diabetes" / "newer.csv", "--epochs", "2",
       "--criteria", strict, "--out", tmp_path / "v4", "--registry", copy_of, "--no-progress")
    with Registry(copy_of) as reg:
        v4 = reg.get("diabetes-risk@4")
        assert v4.parent == 3 and v4.gate_passed is False and v4.record["gate"]["rows"][0]["id"] == "big-gain"
    capsys.readouterr()
    assert run("registry", "promote", "diabetes-risk@4", "--registry", copy_of) == 2
    assert "failed its gate" in capsys.readouterr().err
    assert run("registry", "history", "diabetes-risk", "--registry", copy_of) == 0
    assert "└── v4 bitfit  gate FAIL [big-gain]" in capsys.readouterr().out
    # a gate result is tied to the update it judged
    assert run("registry", "add", tmp_path / "v4" / "run", "--name", "other", "--gate", folder / "runs" / "v2" / "gate" / "gate.json",
               "--registry", copy_of) == 2
    assert "judged another update" in capsys.readouterr().err
