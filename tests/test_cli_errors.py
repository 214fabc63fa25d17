"""Bad input through the real CLI (in process): exit code 2, a message naming the problem and the fix,
no traceback, and nothing written (no --out, no .partial or temp leftovers, existing files untouched)."""

import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from selectune.cli import main

KINDS = ["tabular", "text"]


# ---------------------------------------------------------------- helpers

def snapshot(*roots) -> dict:
    """Every file and folder under roots, with size and mtime: any write, delete or touch changes it."""
    state = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                info = os.stat(path)
                state[path] = (info.st_size, info.st_mtime_ns)
    return state


def fails(capsys, argv, out, *expected, watch=()):
    """Run `selectune ARGV`; assert it is refused cleanly with a message holding every EXPECTED string."""
    out = Path(out)
    roots = [out.parent, *watch]
    existed = out.exists()
    before = snapshot(*roots)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert err.startswith(f"selectune {argv[0]}: error: "), err
    for piece in expected:
        assert piece in err, f"{piece!r} not in:\n{err}"
    assert out.exists() == existed, f"{out} was {'removed' if existed else 'written'}"
    leftovers = [p.name for p in out.parent.iterdir() if ".partial" in p.name or p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    assert snapshot(*roots) == before, "files changed on a refused command"
    return err


def tabular_frame(n=60, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).round(3)
    return pd.DataFrame({"f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2], "label": np.where(x[:, 0] + x[:, 1] > 0, "a", "b")})


def write(frame: pd.DataFrame, path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


class Setup:
    """One data kind: a good training frame and the `selectune train` arguments that train on it."""

    def __init__(self, kind, tmp_path, request):
        self.kind, self.tmp = kind, tmp_path
        if kind == "tabular":
            self.frame, self.model, self.cols = tabular_frame(), "mlp", ["--feature-cols", "f1,f2,f3"]
            self.method, self.data_col = "full", "f2"
        else:
            train_csv, _ = request.getfixturevalue("tiny_text_csvs")
            self.frame, self.model, self.cols = pd.read_csv(train_csv), request.getfixturevalue("tiny_bert_dir"), ["--text-col", "text"]
            self.method, self.data_col = "bitfit", "text"
        self.out = tmp_path / "run"

    def write(self, frame=None, name="train.csv") -> str:
        return write(self.frame if frame is None else frame, self.tmp / name)

    def argv(self, train, *extra, cols=None, model=None, method=None):
        return ["train", train, "--model", model or self.model, "--out", self.out, "--method", method or self.method,
                "--epochs", "1", "--no-progress", *(self.cols if cols is None else cols), *extra]


@pytest.fixture(params=KINDS)
def setup(request, tmp_path):
    return Setup(request.param, tmp_path, request)


@pytest.fixture
def tabular(request, tmp_path):
    return Setup("tabular", tmp_path, request)


@pytest.fixture
def text(request, tmp_path):
    return Setup("text", tmp_path, request)


# ---------------------------------------------------------------- train: files

def test_missing_train_file(setup, capsys):
    fails(capsys, setup.argv(str(setup.tmp / "nope.csv")), setup.out, "not found", "nope.csv", "Check the path")


def test_missing_test_file(setup, capsys):
    argv = setup.argv(setup.write(), "--test", setup.tmp / "no_test.csv")
    fails(capsys, argv, setup.out, "not found", "no_test.csv", "Check the path")


def test_empty_file(setup, capsys):
    (setup.tmp / "train.csv").write_bytes(b"")
    fails(capsys, setup.argv(str(setup.tmp / "train.csv")), setup.out, "train.csv", "is empty", "header and data rows")


def test_header_only_file(setup, capsys):
    train = setup.write(setup.frame.iloc[:0])
    fails(capsys, setup.argv(train), setup.out, "train.csv", "only a header", "data rows")


def test_undecodable_text(setup, capsys):
    frame = setup.frame.astype(str)
    frame.iloc[2, 0] = "caf\xe9 au lait"
    path = setup.tmp / "train.csv"
    path.write_bytes(frame.to_csv(index=False).encode("latin-1"))
    fails(capsys, setup.argv(str(path)), setup.out, "train.csv", "not UTF-8", "iconv -f latin1 -t utf-8")


# ---------------------------------------------------------------- train: columns and values

def test_missing_label_column(setup, capsys):
    fails(capsys, setup.argv(setup.write(), "--label-col", "outcome"), setup.out,
          "Column 'outcome' not found", "train.csv", "label", "--label-col")


def test_missing_data_column(setup, capsys):
    # The text or a feature column named on the command line is absent from the file.
    cols = ["--feature-cols", "f1,f2,f9"] if setup.kind == "tabular" else ["--text-col", "review"]
    missing = "f9" if setup.kind == "tabular" else "review"
    fails(capsys, setup.argv(setup.write(), cols=cols), setup.out, f"Column {missing!r} not found", "train.csv", cols[0])


def test_missing_column_in_test_file(setup, capsys):
    test = setup.write(setup.frame.drop(columns=[setup.data_col]), "test.csv")
    fails(capsys, setup.argv(setup.write(), "--test", test), setup.out, f"Column {setup.data_col!r} not found", "test.csv")


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_labels(setup, capsys, blank):
    frame = setup.frame.copy()
    frame.loc[[2, 5], "label"] = blank
    fails(capsys, setup.argv(setup.write(frame)), setup.out,
          "2 row(s)", "no label", "'label'", "rows 3, 6", "Drop those rows or fill in their labels")


def test_test_label_not_seen_in_training(setup, capsys):
    test = setup.frame.copy()
    test.loc[0, "label"] = "maybe"
    argv = setup.argv(setup.write(), "--test", setup.write(test, "test.csv"))
    fails(capsys, argv, setup.out, "'maybe'", "test data", "never occur in training", "drop those rows")


def test_non_numeric_feature(tabular, capsys):
    frame = tabular.frame.astype({"f2": object})
    frame.loc[4, "f2"] = "high"
    fails(capsys, tabular.argv(tabular.write(frame)), tabular.out,
          "'f2'", "train.csv", "not numeric", "'high'", "rows 5", "Encode it numerically")


def test_missing_feature_value(tabular, capsys):
    frame = tabular.frame.copy()
    frame.loc[7, "f3"] = np.nan
    fails(capsys, tabular.argv(tabular.write(frame)), tabular.out, "'f3'", "missing value", "rows 8", "Impute")


def test_empty_text(text, capsys):
    frame = text.frame.copy()
    frame.loc[3, "text"] = " "
    fails(capsys, text.argv(text.write(frame)), text.out, "empty text", "'text'", "rows 4", "Drop those rows")


def test_text_and_feature_cols(tabular, capsys):
    argv = tabular.argv(tabular.write(), cols=["--feature-cols", "f1,f2", "--text-col", "f3"])
    fails(capsys, argv, tabular.out, "--text-col", "--feature-cols", "not both")


# ---------------------------------------------------------------- train: method, model, output

def test_unknown_method(setup, capsys):
    fails(capsys, setup.argv(setup.write(), method="nosuch"), setup.out,
          "unknown method 'nosuch'", "bitfit", "full", "selectune methods")


def test_unknown_method_option(setup, capsys):
    fails(capsys, setup.argv(setup.write(), method="bitfit:nosuch=1"), setup.out,
          "'bitfit'", "nosuch", "its options are", "roles")


def test_malformed_method_option(setup, capsys):
    fails(capsys, setup.argv(setup.write(), method="bitfit:roles"), setup.out, "'roles'", "key=value")


def test_out_exists(setup, capsys):
    setup.out.mkdir()
    (setup.out / "keep.txt").write_text("earlier results")
    fails(capsys, setup.argv(setup.write()), setup.out, str(setup.out), "already exists", "--overwrite")
    assert (setup.out / "keep.txt").read_text() == "earlier results"
    assert [p.name for p in setup.out.iterdir()] == ["keep.txt"]


def test_model_folder_is_not_a_model(setup, capsys):
    folder = setup.tmp / "not_a_model"
    folder.mkdir()
    (folder / "notes.txt").write_text("not weights")
    fails(capsys, setup.argv(setup.write(), model=str(folder)), setup.out,
          "not_a_model", "not a model folder", "no config.json", "notes.txt", "Hugging Face model folder", "--model mlp")


def test_text_model_given_for_tabular_data(tabular, tiny_bert_dir, capsys):
    fails(capsys, tabular.argv(tabular.write(), model=tiny_bert_dir), tabular.out,
          tiny_bert_dir, "not a selectune tabular model directory", "--model mlp")


def test_model_folder_does_not_exist(setup, capsys):
    folder = setup.tmp / "no_such_model"
    expected = ["model folder not found", "no_such_model", "Check the path", "`mlp`"]
    fails(capsys, setup.argv(setup.write(), model=str(folder)), setup.out, *expected)


def test_val_fraction_out_of_range_and_patience_without_validation(setup, capsys):
    fails(capsys, setup.argv(setup.write(), "--val-fraction", "-0.1"), setup.out, "--val-fraction must be between 0 and 1",
          "0 to train on every row")
    fails(capsys, setup.argv(setup.write(), "--val-fraction", "0", "--patience", "2"), setup.out, "--patience",
          "--val-fraction 0 holds out no validation rows", "drop --patience")


def test_compare_without_validation_rows_needs_cv(text, capsys):
    argv = ["compare", text.write(), "--test", text.write(name="test.csv"), "--model", text.model, "--text-col", "text",
            "--methods", "bitfit", "--val-fraction", "0", "--out", text.tmp / "cmp"]
    fails(capsys, argv, text.tmp / "cmp", "chooses each method's learning rate on validation rows", "--cv K")


def test_update_without_validation_rows_is_refused_before_anything_is_read(tmp_path, capsys):
    argv = ["update", "--from", "risk@1", "--data", tmp_path / "new.csv", "--registry", tmp_path / "registry", "--val-fraction", "0",
            "--out", tmp_path / "u"]
    fails(capsys, argv, tmp_path / "u", "its gate chooses thresholds on them", "--val-fraction above 0 or a --validation FILE")


# ---------------------------------------------------------------- evaluate / predict / merge

@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """Real deltas, trained once: {kind: (run dir, extra args that load it, data frame)}."""
    runs = {}
    root = tmp_path_factory.mktemp("trained")
    frame = tabular_frame()
    train = write(frame, root / "tab.csv")
    assert main(["train", train, "--model", "mlp", "--feature-cols", "f1,f2,f3", "--method", "full", "--epochs", "1",
                 "--out", str(root / "tab"), "--no-progress"]) == 0
    # A delta of a new MLP is applied to the model/ folder written beside it.
    runs["tabular"] = (root / "tab", ["--model", str(root / "tab" / "model")], frame)
    train_csv, test_csv = request.getfixturevalue("tiny_text_csvs")
    assert main(["train", train_csv, "--test", test_csv, "--model", request.getfixturevalue("tiny_bert_dir"),
                 "--text-col", "text", "--method", "bitfit", "--epochs", "1", "--out", str(root / "text"), "--no-progress"]) == 0
    runs["text"] = (root / "text", [], pd.read_csv(test_csv))
    return runs


def write_pickle_bomb(path: Path, marker: Path) -> None:
    """A pickle that creates MARKER when unpickled."""
    class Bomb:
        def __reduce__(self):
            return os.system, (f"touch {shlex.quote(str(marker))}",)

    path.write_bytes(pickle.dumps(Bomb()))


def test_pickle_bomb_is_live(tmp_path):
    # Guards the tests below: unpickling this payload really does run code.
    write_pickle_bomb(tmp_path / "proof.bin", tmp_path / "proof")
    pickle.loads((tmp_path / "proof.bin").read_bytes())
    assert (tmp_path / "proof").exists()


def inference_argv(command, data, delta, out, extra=()):
    if command == "merge":
        return ["merge", delta, out, *extra]
    return [command, data, "--delta", delta, "--out", out, *extra]


OUT_NAMES = {"evaluate": "metrics.json", "predict": "pred.csv", "merge": "merged"}


@pytest.mark.parametrize("command", ["evaluate", "predict", "merge"])
def test_delta_not_found(trained, tmp_path, capsys, command):
    run, extra, frame = trained["tabular"]
    data, out = write(frame, tmp_path / "data.csv"), tmp_path / OUT_NAMES[command]
    fails(capsys, inference_argv(command, data, tmp_path / "no_delta", out, extra), out,
          "delta not found", "no_delta", "selectune train --out", watch=[run])


@pytest.mark.parametrize("command", ["evaluate", "predict", "merge"])
def test_pickle_delta_is_refused_unopened(trained, tmp_path, capsys, command):
    run, extra, frame = trained["tabular"]
    data, out = write(frame, tmp_path / "data.csv"), tmp_path / OUT_NAMES[command]
    bomb, marker = tmp_path / "delta.bin", tmp_path / "PWNED"
    write_pickle_bomb(bomb, marker)
    fails(capsys, inference_argv(command, data, bomb, out, extra), out, "delta.bin", "never unpickles", "safetensors", watch=[run])
    assert not marker.exists(), "the pickle was unpickled"


@pytest.mark.parametrize("command", ["evaluate", "predict", "merge"])
def test_pickle_disguised_as_safetensors_is_refused(trained, tmp_path, capsys, command):
    # A delta folder whose delta.safetensors is really a pickle: refused by its bytes, not its name.
    run, extra, frame = trained["tabular"]
    data, out = write(frame, tmp_path / "data.csv"), tmp_path / OUT_NAMES[command]
    fake, marker = tmp_path / "fake_delta", tmp_path / "PWNED"
    fake.mkdir()
    (fake / "delta_config.json").write_bytes((run / "delta" / "delta_config.json").read_bytes())
    write_pickle_bomb(fake / "delta.safetensors", marker)
    fails(capsys, inference_argv(command, data, fake, out, extra), out, "delta.safetensors", "is a pickle", "never unpickles",
          watch=[run])
    assert not marker.exists(), "the pickle was unpickled"


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_data_without_label_column(trained, tmp_path, capsys, kind):
    run, extra, frame = trained[kind]
    data, out = write(frame.drop(columns=["label"]), tmp_path / "data.csv"), tmp_path / "metrics.json"
    fails(capsys, ["evaluate", data, "--delta", run / "delta", "--out", out, *extra], out,
          "data.csv", "lacks column(s) ['label']", "rename the columns", watch=[run])


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_unseen_label(trained, tmp_path, capsys, kind):
    run, extra, frame = trained[kind]
    frame = frame.copy()
    frame.loc[1, "label"] = "maybe"
    data, out = write(frame, tmp_path / "data.csv"), tmp_path / "metrics.json"
    fails(capsys, ["evaluate", data, "--delta", run / "delta", "--out", out, *extra], out,
          "data.csv", "['maybe']", "never seen in training", "Remove those rows", watch=[run])


@pytest.mark.parametrize("kind", KINDS)
def test_predict_data_without_input_column(trained, tmp_path, capsys, kind):
    run, extra, frame = trained[kind]
    column = "f2" if kind == "tabular" else "text"
    data, out = write(frame.drop(columns=[column]), tmp_path / "data.csv"), tmp_path / "pred.csv"
    fails(capsys, ["predict", data, "--delta", run / "delta", "--out", out, *extra], out,
          "data.csv", f"lacks column(s) [{column!r}]", "rename the columns", watch=[run])


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_inference_data_file_not_found(trained, tmp_path, capsys, command):
    run, extra, _ = trained["tabular"]
    out = tmp_path / OUT_NAMES[command]
    fails(capsys, inference_argv(command, tmp_path / "nope.csv", run / "delta", out, extra), out,
          "not found", "nope.csv", "Check the path", watch=[run])


def test_merge_out_exists(trained, tmp_path, capsys):
    run, extra, _ = trained["tabular"]
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("earlier")
    fails(capsys, ["merge", run / "delta", out, *extra], out, "already exists", "--overwrite", watch=[run])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_good_inputs_succeed(trained, tmp_path, capsys):
    # The control for every refusal above: the same deltas and data, unbroken, work.
    for kind, (run, extra, frame) in trained.items():
        data = write(frame, tmp_path / f"{kind}.csv")
        assert main(["evaluate", data, "--delta", str(run / "delta"), "--out", str(tmp_path / f"{kind}.json"), *extra]) == 0
        assert main(["predict", data, "--delta", str(run / "delta"), "--out", str(tmp_path / f"{kind}-pred.csv"), *extra]) == 0
        assert len(pd.read_csv(tmp_path / f"{kind}-pred.csv")) == len(frame)
        assert main(["merge", str(run / "delta"), str(tmp_path / f"{kind}-merged"), *extra]) == 0
        assert (tmp_path / f"{kind}-merged" / "config.json").is_file()
