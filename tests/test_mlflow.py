"""MLflow against a real `mlflow server` on loopback (sqlite backend, artifacts in tmp): what `--mlflow-uri` logs on
train, gate, update and compare, read back through `mlflow.MlflowClient`; the registry mirrored into MLflow's Model
Registry with the `production` alias following promote and rollback; and the failures that must stay clean."""
import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from selectune.cli import main
from selectune.registry import Registry
from selectune.tracking import INSTALL_FIX
from tests.test_clinical import FEATURES, clinical_table

MlflowClient = mlflow.MlflowClient  # the mlflow extra, which scripts/test.sh installs (setup.sh mlflow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: list[str], folder: Path, uri: str) -> subprocess.Popen:
    """``mlflow server`` in its own process group, once /health answers (the first start migrates its sqlite file)."""
    log = open(folder / "server.log", "wb")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited {server.returncode}:\n{(folder / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"mlflow server did not answer within 180 s:\n{(folder / 'server.log').read_text()[-3000:]}")


def stop_server(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn worker it started
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:  # its files are in tmp: nothing to shut down gracefully for
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")]
    process = start_server(command, folder, uri)
    yield uri
    stop_server(process)


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-clinic")
    for name, (n, site, seed) in {"a_train": (200, "a", 1), "a_test": (60, "a", 3), "b_train": (120, "b", 4),
                                  "b_test": (80, "b", 5)}.items():
        clinical_table(n, site, seed).to_csv(folder / f"{name}.csv", index=False)
    (folder / "criteria.yaml").write_text("criteria:\n  - {metric: auroc, rule: non_inferior, margin: 1.0}\n")
    return folder


COMMON = ["--feature-cols", FEATURES, "--label-col", "outcome", "--no-progress"]
PREP = ["--impute", "median", "--missing-indicators", "--categorical-cols", "sex"]


def only_run(client: MlflowClient, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_train_logs_settings_metrics_and_the_delta(server, clinic, tmp_path):
    out = tmp_path / "base"
    code, _, err = run("train", clinic / "a_train.csv", "--test", clinic / "a_test.csv", "--model", "mlp", "--method", "full",
                       "--lr", "3e-3", "--epochs", "3", *PREP, *COMMON, "--out", out, "--mlflow-uri", server,
                       "--mlflow-experiment", "train-test")
    assert code == 0, err
    client = MlflowClient(server)
    logged = only_run(client, "train-test")
    params, metrics, tags = logged.data.params, logged.data.metrics, logged.data.tags
    config, saved = json.loads((out / "run_config.json").read_text()), json.loads((out / "metrics.json").read_text())
    assert params["method"] == "full" and params["model"] == "mlp" and params["train_config.epochs"] == "3"
    assert params["preprocessing.impute"] == "median" and json.loads(params["preprocessing.indicators"]) == ["crp", "hb"]
    assert params["data_files.train.sha256"] == config["data_files"]["train"]["sha256"]
    assert metrics["macro_f1"] == pytest.approx(saved["test"]["macro_f1"]) and metrics["auroc"] == pytest.approx(saved["test"]["auroc"])
    assert metrics["majority_accuracy"] == pytest.approx(saved["majority_baseline"]["accuracy"])
    history = client.get_metric_history(logged.info.run_id, "val_macro_f1")
    assert [m.step for m in history] == [1, 2, 3]  # the validation curve, one point per epoch
    assert tags["selectune.command"] == "train" and logged.info.status == "FINISHED"
    assert {"delta/delta.safetensors", "delta/delta_config.json"} <= artifact_paths(client, logged.info.run_id, "delta")
    downloaded = client.download_artifacts(logged.info.run_id, "delta/delta.safetensors", str(tmp_path))
    assert Path(downloaded).read_bytes() == (out / "delta" / "delta.safetensors").read_bytes()
    assert "model/config.json" in artifact_paths(client, logged.info.run_id, "model")  # a new tabular base: the delta's base


def test_registry_versions_mirror_into_mlflow_and_production_follows_promote_and_rollback(server, clinic, tmp_path):
    """add (v1) -> promote -> update with a gate (v2, logged, mirrored) -> promote -> rollback, all with --mlflow-uri."""
    registry, uri = tmp_path / "registry", ["--mlflow-uri", server, "--mlflow-experiment", "registry-test"]
    assert run("train", clinic / "a_train.csv", "--test", clinic / "a_test.csv", "--model", "mlp", "--method", "full", "--lr", "3e-3",
               "--epochs", "3", *PREP, *COMMON, "--out", tmp_path / "base")[0] == 0
    assert run("registry", "add", tmp_path / "base" / "model", "--name", "clinic-risk", "--registry", registry, *uri)[0] == 0
    client = MlflowClient(server)
    [v1] = client.search_model_versions("name = 'clinic-risk'")
    assert v1.version == "1" and v1.tags["selectune.version"] == "1" and v1.tags["selectune.gate"] == "none"
    assert client.get_registered_model("clinic-risk").aliases == {}
    assert run("registry", "promote", "clinic-risk@1", "--registry", registry, *uri)[0] == 0
    assert client.get_model_version_by_alias("clinic-risk", "production").version == "1"

    code, _, err = run("update", "--from", "clinic-risk@1", "--registry", registry, "--data", clinic / "b_train.csv", "--method", "bitfit",
                       "--epochs", "3", "--criteria", clinic / "criteria.yaml", "--out", tmp_path / "v2", "--no-progress", *uri)
    assert code == 0, err
    with Registry(str(registry)) as reg:
        local = reg.get("clinic-risk@2")
    v2 = client.get_model_version("clinic-risk", "2")
    assert v2.tags["selectune.parent"] == "1" and v2.tags["selectune.gate"] == "passed"
    assert v2.tags["selectune.base_fingerprint"] == local.base_fingerprint
    assert v2.tags["selectune.delta_weights_sha256"] == local.weights_sha256
    assert "delta/delta.safetensors" in artifact_paths(client, v2.run_id, "delta")  # the version's source: its delta
    assert v2.source.endswith("/delta")
    # the update's own run: parent metrics on the same rows, the gate's metrics with CIs, the verdict
    update_run = next(r for r in client.search_runs([client.get_experiment_by_name("registry-test").experiment_id])
                      if r.data.tags.get("selectune.command") == "update")
    m = update_run.data.metrics
    assert m["gate_passed"] == 1.0 and update_run.data.tags["selectune.gate"] == "passed"
    assert m["auroc_ci_low"] <= m["auroc"] <= m["auroc_ci_high"] and "parent_auroc" in m and "base_auroc_ci_low" in m
    assert {"gate/gate.json", "gate/evaluation.json"} <= artifact_paths(client, update_run.info.run_id, "gate")

    assert run("registry", "promote", "clinic-risk@2", "--registry", registry, *uri)[0] == 0
    assert client.get_model_version_by_alias("clinic-risk", "production").version == "2"
    assert run("registry", "rollback", "clinic-risk", "--registry", registry, "--reason", "withdrawn", *uri)[0] == 0
    assert client.get_model_version_by_alias("clinic-risk", "production").version == "1"
    assert len(client.search_model_versions("name = 'clinic-risk'")) == 2  # nothing mirrored twice


def test_gate_logs_metrics_with_ci_bounds_and_the_verdict(server, clinic, tmp_path):
    for name, data, extra in (("base", "a_train.csv", ["--model", "mlp", "--method", "full", *PREP]),
                              ("update", "b_train.csv", ["--model", tmp_path / "base" / "model", "--init-delta", tmp_path / "base" / "delta",
                                                         "--method", "bitfit"])):
        assert run("train", clinic / data, *extra, "--lr", "3e-3", "--epochs", "3", *COMMON, "--out", tmp_path / name)[0] == 0
    code, output, err = run("gate", "--base", tmp_path / "base", "--update", tmp_path / "update", "--criteria", clinic / "criteria.yaml",
                            "--test", clinic / "b_test.csv", "--group-cols", "sex", "--resamples", "200", "--out", tmp_path / "gate",
                            "--mlflow-uri", server, "--mlflow-experiment", "gate-test")
    assert code == 0, err
    client = MlflowClient(server)
    logged = only_run(client, "gate-test")
    m, evaluation = logged.data.metrics, json.loads((tmp_path / "gate" / "evaluation.json").read_text())
    auroc = evaluation["models"]["update"]["metrics"]["auroc"]
    assert (m["auroc"], m["auroc_ci_low"], m["auroc_ci_high"]) == pytest.approx((auroc["value"], auroc["ci_low"], auroc["ci_high"]))
    assert m["base_auroc"] == pytest.approx(evaluation["models"]["base"]["metrics"]["auroc"]["value"])
    assert m["update_minus_base_auroc_ci_low"] == pytest.approx(evaluation["paired_differences"]["auroc"]["ci_low"])
    gate = json.loads((tmp_path / "gate" / "gate.json").read_text())
    assert m["gate_passed"] == 1.0 and {f"criterion.{r['id']}_passed": 1.0 for r in gate["rows"]}.items() <= m.items()
    assert logged.data.tags["selectune.gate"] == "passed" and logged.data.params["settings.resamples"] == "200"
    assert {"gate/gate.json", "gate/evaluation.json", "gate/criteria.yaml", "gate/predictions.csv"} <= artifact_paths(
        client, logged.info.run_id, "gate")
    assert "delta/delta.safetensors" in artifact_paths(client, logged.info.run_id, "delta")  # the update the gate judged
    assert "mlflow_run_id" not in json.loads((tmp_path / "gate" / "gate.json").read_text())  # OUT is as without MLflow


def test_compare_logs_one_nested_run_per_method_with_ci_bounds(server, clinic, tmp_path):
    code, _, err = run("compare", clinic / "a_train.csv", "--test", clinic / "a_test.csv", "--model", "mlp", "--methods", "full,bitfit",
                       "--epochs", "2", "--bootstrap", "100", *PREP, *COMMON, "--out", tmp_path / "cmp", "--mlflow-uri", server,
                       "--mlflow-experiment", "compare-test")
    assert code == 0, err
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("compare-test").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"full", "bitfit"}
    saved = {s["method"]: s for s in json.loads((tmp_path / "cmp" / "compare.json").read_text())["methods"]}
    for method, child in children.items():
        test = saved[method]["test"]["macro_f1"]
        m = child.data.metrics
        assert (m["macro_f1"], m["macro_f1_ci_low"], m["macro_f1_ci_high"]) == pytest.approx((test["mean"], test["ci_low"], test["ci_high"]))
        assert child.data.params["lr"] == str(saved[method]["lr"])
    assert parent.data.params["preprocessing.impute"] == "median"
    assert "compare.json" in artifact_paths(client, parent.info.run_id)


def test_registry_mirror_catches_up_a_registry_used_without_mlflow(server, clinic, tmp_path):
    registry = tmp_path / "registry"
    assert run("train", clinic / "a_train.csv", "--model", "mlp", "--method", "full", "--epochs", "2", *PREP, *COMMON,
               "--out", tmp_path / "base")[0] == 0
    assert run("registry", "add", tmp_path / "base" / "model", "--name", "catch-up", "--registry", registry)[0] == 0
    assert run("registry", "promote", "catch-up@1", "--registry", registry)[0] == 0
    code, output, err = run("registry", "mirror", "catch-up", "--registry", registry, "--mlflow-uri", server)
    assert code == 0, err
    assert json.loads(output)["added"] == [1] and json.loads(output)["production"] == 1
    client = MlflowClient(server)
    assert client.get_model_version_by_alias("catch-up", "production").tags["selectune.version"] == "1"
    code, output, _ = run("registry", "mirror", "catch-up", "--registry", registry, "--mlflow-uri", server)
    assert code == 0 and json.loads(output)["added"] == []  # idempotent
    assert len(client.search_model_versions("name = 'catch-up'")) == 1


def test_report_goes_into_the_run_of_the_update_it_reports_on(server, clinic, tmp_path):
    from selectune.train.run import train

    uri = ["--mlflow-uri", server, "--mlflow-experiment", "report-test"]
    # the library call takes the same settings flat
    summary = train(str(clinic / "a_train.csv"), out=str(tmp_path / "update"), model="mlp", method="full", epochs=2, impute="median",
                    categorical_cols="sex", feature_cols=FEATURES, label_col="outcome", progress=False, mlflow_uri=server,
                    mlflow_experiment="report-test")
    code, _, err = run("report", tmp_path / "update", "--out", tmp_path / "report", *uri)
    assert code == 0, err
    client = MlflowClient(server)
    logged = only_run(client, "report-test")  # the training run, not a new one
    assert logged.info.run_id == summary["mlflow_run_id"]
    assert logged.data.tags["selectune.command"] == "train" and logged.data.tags["selectune.report"] == str((tmp_path / "report").resolve())
    assert {"report/report.html", "report/report.md"} <= artifact_paths(client, logged.info.run_id, "report")
    html = client.download_artifacts(logged.info.run_id, "report/report.html", str(tmp_path))
    assert Path(html).read_bytes() == (tmp_path / "report" / "report.html").read_bytes()
    # a run that was never logged: the report becomes a run of its own
    code, _, err = run("report", tmp_path / "update", "--out", tmp_path / "report2", "--mlflow-uri", server, "--mlflow-experiment", "report-alone")
    assert code == 0, err
    alone = only_run(client, "report-alone")
    assert alone.data.tags["selectune.command"] == "report" and "report/report.html" in artifact_paths(client, alone.info.run_id, "report")


# ---- failures: exit 2, one line naming the fix, nothing half-written --------------------------------------------

def test_an_unreachable_server_stops_before_any_work(clinic, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "run"
    code, _, err = run("train", clinic / "a_train.csv", "--model", "mlp", "--method", "full", "--epochs", "1", *PREP, *COMMON,
                       "--out", out, "--mlflow-uri", dead)
    assert code == 2 and "does not answer" in err and dead in err and "Traceback" not in err
    assert not out.exists() and not out.with_name("run.checkpoints").exists()
    registry = tmp_path / "registry"
    code, _, err = run("registry", "mirror", "nothing", "--registry", registry, "--mlflow-uri", dead)
    assert code == 2 and "does not answer" in err


def test_without_mlflow_installed_the_flag_names_the_one_line_fix(clinic, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets where the extra is not installed
    out = tmp_path / "run"
    code, _, err = run("train", clinic / "a_train.csv", "--model", "mlp", "--method", "full", "--epochs", "1", *PREP, *COMMON,
                       "--out", out, "--mlflow-uri", "http://127.0.0.1:5000")
    assert code == 2 and INSTALL_FIX in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # without the flag nothing needs mlflow
    assert run("train", clinic / "a_train.csv", "--model", "mlp", "--method", "full", "--epochs", "1", *PREP, *COMMON, "--out", out)[0] == 0


# ---- the README's MLflow commands, exactly as written ------------------------------------------------------------

def test_readme_mlflow_commands_run_as_written(tmp_path):
    from tests.test_founding_uses import ROOT, run_line, walkthrough

    server_line, *lines = walkthrough("MLflow: runs and the Model Registry")
    command = shlex.split(server_line)
    assert command[:2] == ["mlflow", "server"] and command[-1] == "&"
    uri = "http://127.0.0.1:5000"
    assert all(uri in line for line in lines if shlex.split(line)[1] not in ("data",)), "every selectune line names the server"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 5000)) != 0, "port 5000 (the README's MLflow server) is taken; free it to run this test"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    process = start_server([str(Path(sys.executable).parent / "mlflow"), *command[1:-1]], tmp_path, uri)  # the `mlflow` of this venv
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)
            outputs = [run_line(line) for line in lines]
        client = MlflowClient(uri)
        versions = {v.version: v for v in client.search_model_versions("name = 'pima-risk'")}
        assert sorted(versions) == ["1", "2"] and versions["2"].tags["selectune.parent"] == "1"
        assert versions["2"].tags["selectune.gate"] == "passed" and versions["1"].tags["selectune.gate"] == "none"
        assert client.get_model_version_by_alias("pima-risk", "production").version == "1"  # promoted 1, then 2, rolled back
        runs = client.search_runs([client.get_experiment_by_name("selectune").experiment_id])
        commands = sorted(r.data.tags["selectune.command"] for r in runs)
        assert commands == ["registry mirror", "registry mirror", "train", "update"]
        update = next(r for r in runs if r.data.tags["selectune.command"] == "update").data.metrics
        assert update["gate_passed"] == 1.0 and update["auroc_ci_low"] < update["auroc"] < update["auroc_ci_high"]
        assert "parent_auroc" in update
        assert (tmp_path / "mlflow.db").is_file() and any((tmp_path / "mlflow-artifacts").rglob("delta.safetensors"))
        assert "gate PASSED" in outputs[4]
    finally:
        stop_server(process)


def test_a_server_that_fails_while_logging_leaves_out_complete_and_says_so(clinic, tmp_path):
    """An HTTP server that answers /health but is no MLflow server: the check passes, the logging fails after OUT is written."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "health").write_text("OK")
    port = free_port()
    site = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path / "site",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        out = tmp_path / "run"
        code, _, err = run("train", clinic / "a_train.csv", "--model", "mlp", "--method", "full", "--epochs", "1", *PREP, *COMMON,
                           "--out", out, "--mlflow-uri", uri)
        assert code == 2 and f"{out} is complete; logging it to MLflow at {uri} failed" in err and "Traceback" not in err, err
        assert (out / "delta" / "delta.safetensors").is_file() and (out / "metrics.json").is_file()  # OUT whole
    finally:
        stop_server(site)
