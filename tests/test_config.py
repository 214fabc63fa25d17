"""Settings declared once (selectune/config.py) and expanded into flags; lists on the command line; one printer
mechanism and exit statuses mapped only in cli.py."""
import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from selectune.cli import COMMANDS, _call_arguments, _resolve, build_parser, main
from selectune.config import (ColumnsConfig, CheckThresholds, ModelConfig, OutputConfig, SplitConfig, TrainConfig, as_list,
                              with_settings)
from selectune.compare.run import CompareConfig
from selectune.evaluate.gate import gate
from selectune.evaluate.scorecard import EvaluationSettings
from selectune.train.run import train

ROOT = Path(__file__).resolve().parent.parent


def parsed(argv):
    """What `selectune ARGV` would call its function with."""
    args = vars(build_parser(argv).parse_args(argv))
    args.pop("command"), args.pop("subcommand", None)
    fn = args.pop("_fn")
    return _call_arguments(fn, args)


@pytest.mark.parametrize("form", [["a,b,c"], ["a", "b", "c"], ["a,b", "c"]])
def test_list_options_take_space_and_comma_forms(form):
    call = parsed(["train", "x.csv", "--model", "mlp", "--out", "o", "--feature-cols", *form, "--hidden", "32", "16"])
    assert call["columns"].feature_cols == ["a", "b", "c"]
    assert call["base"] == ModelConfig(model="mlp", hidden=[32, 16], max_length=128)
    cmp = parsed(["compare", "x.csv", "--model", "mlp", "--out", "o", "--seeds", "0,1", "2", "--group-cols", "site", "sex"])
    assert cmp["comparison"].seeds == [0, 1, 2] and cmp["comparison"].group_cols == ["site", "sex"]
    assert parsed(["update", "--from", "m@1", "--data", "d.csv", "--out", "o", "--group-cols", "site,sex"])["group_cols"] == ["site", "sex"]


def test_defaults_come_from_the_dataclass_or_the_commands_instance():
    call = parsed(["train", "x.csv", "--model", "minilm", "--out", "o"])
    assert call["training"] == TrainConfig() and call["split"] == SplitConfig() and call["base"].hidden == [64, 64]
    update = parsed(["update", "--from", "m@1", "--data", "d.csv", "--out", "o"])
    assert update["split"].test_fraction == 0.25  # update holds out a quarter for test unless told otherwise
    assert parsed(["update", "--from", "m@1", "--data", "d.csv", "--out", "o", "--test-fraction", "0.1"])["split"].test_fraction == 0.1


def flags(command):
    sub = build_parser([command])._subparsers._group_actions[0].choices[command]
    return [s for a in sub._actions for s in a.option_strings]


def test_compare_has_no_lr_or_seed_flag_and_check_no_group_col():
    assert "--lr" not in flags("compare") and "--seed" not in flags("compare") and "--seeds" in flags("compare")
    assert "--epochs" in flags("compare") and "--new-lr" in flags("compare")
    assert "--group-col" not in flags("check") and "--id-col" in flags("check")
    assert "--eval-batch-size" not in flags("train")  # a field with cli=False
    assert parsed(["check", "x.csv", "--min-group-size", "5"])["thresholds"] == CheckThresholds(min_group_size=5)


def test_every_field_has_help_and_every_flag_is_declared_once():
    for cls in (ColumnsConfig, SplitConfig, ModelConfig, TrainConfig, CompareConfig, CheckThresholds, OutputConfig, EvaluationSettings):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    for command in ("train", "compare", "update", "check", "gate"):
        assert len(flags(command)) == len(set(flags(command)))


def test_python_callers_get_lists_from_comma_strings_and_unknown_names_refused():
    assert ColumnsConfig(feature_cols="a, b,").feature_cols == ["a", "b"]
    assert ModelConfig(model="mlp", hidden="64,32").hidden == [64, 32]
    configs = with_settings("train", {"columns": ColumnsConfig(), "base": ModelConfig, "training": TrainConfig()},
                            {"model": "mlp", "feature_cols": "x,y", "epochs": 2})
    assert configs["base"].model == "mlp" and configs["columns"].feature_cols == ["x", "y"] and configs["training"].epochs == 2
    with pytest.raises(TypeError, match="epoch"):
        with_settings("train", {"training": TrainConfig()}, {"epoch": 2})
    with pytest.raises(ValueError, match="--hidden must be comma-separated integers"):
        as_list("64,x", int, "--hidden")


def test_bad_list_item_on_the_command_line_exits_2_naming_the_flag(tmp_path, capsys):
    code = main(["train", str(tmp_path / "x.csv"), "--model", "mlp", "--out", str(tmp_path / "o"), "--hidden", "64", "big"])
    assert code == 2
    assert "--hidden must be comma-separated integers" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_validation_lives_in_the_configs_with_the_old_messages():
    with pytest.raises(ValueError, match="not both"):
        ColumnsConfig(text_col="t", feature_cols=["a"]).validate()
    with pytest.raises(ValueError, match="--task must be classification or regression"):
        ColumnsConfig(text_col="t", task="regression").validate()
    with pytest.raises(ValueError, match="--class-weight must be 'balanced'"):
        TrainConfig(class_weight="inverse").validate()
    with pytest.raises(ValueError, match=r"--dropout must be in \[0, 1\)"):
        TrainConfig(dropout=1.0).validate()
    # The metric left open is the task's default; one the user named stays.
    assert TrainConfig().for_task("rmse").metric == "rmse" and TrainConfig(metric="mae").for_task("rmse").metric == "mae"


def test_exit_status_is_mapped_in_cli_only():
    assert COMMANDS["gate"].exit_status({"passed": False}) == 1 and COMMANDS["gate"].exit_status({"passed": True}) == 0
    assert COMMANDS["gate"].exit_status({"passed": False, "exit_code": 1}) == 1
    assert COMMANDS["check"].exit_status({"status": "refuse"}) == 1 and COMMANDS["check"].exit_status({"status": "warn"}) == 0
    assert COMMANDS["registry verify"].exit_status({"problems": ["x"]}) == 1
    assert COMMANDS["registry verify"].exit_status({"problems": []}) == 0


def test_one_printer_mechanism_and_no_library_module_imports_the_cli():
    for command in COMMANDS.values():
        assert callable(_resolve(command.target)) and callable(_resolve(command.render))
        assert not hasattr(_resolve(command.target), "render")
    for path in (ROOT / "selectune").rglob("*.py"):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "selectune.cli" not in imported, path


def test_check_result_carries_no_exit_code_and_refusal_exits_1(tmp_path, capsys):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"patient": np.arange(40) % 10, "x": rng.normal(size=40), "label": ["a", "b"] * 20})
    frame.iloc[:30].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[30:].to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "checks.json"
    code = main(["check", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--feature-cols", "x",
                 "--id-col", "patient", "--out", str(out)])
    assert code == 1 and "REFUSED" in capsys.readouterr().out
    assert json.loads(out.read_text())["status"] == "refuse"
    from selectune.data.check_command import check
    result = check(str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), feature_cols="x", id_col="patient")
    assert result["status"] == "refuse" and "exit_code" not in result


def test_an_abbreviated_flag_is_refused_not_read_as_another(capsys):
    # `compare --lr 1e-3` must not quietly become `--lr-sweep`: compare has no --lr at all.
    with pytest.raises(SystemExit) as exit_:
        build_parser(["compare"]).parse_args(["compare", "train.csv", "--out", "x", "--model", "m", "--lr", "1e-3"])
    assert exit_.value.code == 2 and "unrecognized arguments: --lr 1e-3" in capsys.readouterr().err
    args = build_parser(["compare"]).parse_args(["compare", "train.csv", "--out", "x", "--model", "m", "--lr-sweep"])
    assert vars(args)["lr_sweep"] is True


GATE = ["gate", "--base", "b", "--update", "u", "--criteria", "c.yaml", "--test", "t.csv", "--out", "o"]


@pytest.mark.parametrize("form", [["site,sex"], ["site", "sex"]])
def test_gate_settings_are_one_config_behind_the_same_flags(form):
    call = parsed([*GATE, "--group-cols", *form, "--min-group-n", "20", "--resamples", "200", "--seed", "3", "--confidence",
                   "0.9", "--threshold-rule", "fixed=0.5", "--positive-label", "pos", "--batch-size", "8"])
    assert call["scoring"] == EvaluationSettings(resamples=200, seed=3, confidence=0.9, threshold_rule="fixed=0.5", min_group_n=20,
                                                 group_cols=["site", "sex"], positive_label="pos")
    assert call["batch_size"] == 8 and call["overwrite"] is False
    assert parsed(GATE)["scoring"] == EvaluationSettings(resamples=1000, seed=0, confidence=0.95, threshold_rule="youden",
                                                         min_group_n=30, group_cols=[], positive_label=None)


def test_gate_takes_its_settings_flat_from_python_and_leaves_the_default_alone(gated_tabular_runs, tmp_path):
    # conftest called gate(..., group_cols="site", min_group_n=20, resamples=200): they reached the evaluation
    settings = json.loads((Path(gated_tabular_runs["gate"]) / "gate.json").read_text())["settings"]
    assert (settings["group_cols"], settings["min_group_n"], settings["resamples"]) == (["site"], 20, 200)
    runs = dict(base=gated_tabular_runs["base"], update=gated_tabular_runs["update"], criteria=gated_tabular_runs["criteria"],
                test=gated_tabular_runs["test"], out=str(tmp_path / "g"))
    # the positive label is resolved on a copy: the caller's settings (or the default instance) stay as given
    mine = EvaluationSettings(group_cols=["site"], min_group_n=20, resamples=50)
    assert gate(**runs, scoring=mine)["settings"]["positive_label"] == settings["positive_label"] is not None
    assert mine.positive_label is None and gate.__kwdefaults__["scoring"] == EvaluationSettings()
    runs["out"] = str(tmp_path / "refused")
    with pytest.raises(ValueError, match="--resamples must be at least 10"):
        gate(**runs, resamples=5)
    with pytest.raises(TypeError, match="resample"):
        gate(**runs, resample=500)


def test_train_run_folder_switches_are_one_config_behind_the_same_flags(tmp_path):
    call = parsed(["train", "x.csv", "--model", "mlp", "--out", "o", "--save-model", "--no-checkpoint", "--resume", "--overwrite"])
    assert call["output"] == OutputConfig(save_model=True, checkpoint=False, resume=True, overwrite=True)
    assert parsed(["train", "x.csv", "--model", "mlp", "--out", "o"])["output"] == OutputConfig(False, True, False, False)
    # Python callers pass them flat, as before; the folder checks run before any data is read
    with pytest.raises(ValueError, match="drop --no-checkpoint"):
        train(str(tmp_path / "missing.csv"), model="mlp", out=str(tmp_path / "o"), resume=True, checkpoint=False)
    (tmp_path / "o").mkdir()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        train(str(tmp_path / "missing.csv"), model="mlp", out=str(tmp_path / "o"))
