"""A training run SIGKILLed mid-way and continued with --resume writes the same delta bytes as a run that was
never interrupted (CPU, same seed); checkpoints that do not fit the command are refused."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selectune.cli import main
from selectune.data import BUNDLED, export_bundled
from selectune.delta import DELTA_WEIGHTS

DIABETES = ",".join(BUNDLED["diabetes"].feature_cols)


def train_argv(kind, data, out, tiny_bert_dir=None, **changes):
    if kind == "tabular":
        args = {"--model": "mlp", "--method": "full", "--feature-cols": DIABETES, "--label-col": "Outcome", "--lr": "1e-3",
                "--epochs": "8", "--test-fraction": "0.2"}
    else:
        args = {"--model": tiny_bert_dir, "--method": "bitfit", "--text-col": "text", "--label-col": "label", "--epochs": "4",
                "--batch-size": "8"}
    args.update(changes)
    return ["train", str(data), *[str(x) for pair in args.items() for x in pair], "--out", str(out), "--no-progress"]


def kill_after_checkpoint(argv, checkpoints: Path, epoch: int) -> None:
    """Run `selectune ARGV` in a child process and SIGKILL it as soon as the checkpoint of EPOCH is in place."""
    proc = subprocess.Popen([sys.executable, "-m", "selectune.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (checkpoints / f"epoch-{epoch:04d}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"training ended (rc {proc.returncode}) before epoch {epoch}'s checkpoint: {proc.stderr.read()[-2000:]}")
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory):
    return Path(export_bundled("diabetes", str(tmp_path_factory.mktemp("diabetes")))["old"])


def history(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())["history"]


def test_tabular_run_killed_and_resumed_writes_the_same_delta(diabetes, tmp_path, capsys):
    ok = main(train_argv("tabular", diabetes, tmp_path / "straight"))
    assert ok == 0 and not (tmp_path / "straight.checkpoints").exists()  # removed once the run completed

    out, checkpoints = tmp_path / "resumed", tmp_path / "resumed.checkpoints"
    kill_after_checkpoint(train_argv("tabular", diabetes, out), checkpoints, epoch=3)
    assert not out.exists() and len(list(checkpoints.glob("epoch-*"))) >= 2
    # refused: starting over by accident, resuming with other settings
    capsys.readouterr()
    assert main(train_argv("tabular", diabetes, out)) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main(train_argv("tabular", diabetes, out, **{"--lr": "2e-3"}) + ["--resume"]) == 2
    assert "different train_config" in capsys.readouterr().err
    # the newest checkpoint damaged: resume falls back to the one before it, and still ends identical
    newest = sorted(checkpoints.glob("epoch-*"))[-1]
    (newest / "tensors.safetensors").write_bytes(b"\0" * 64)
    assert main(train_argv("tabular", diabetes, out) + ["--resume"]) == 0
    assert (out / "delta" / DELTA_WEIGHTS).read_bytes() == (tmp_path / "straight" / "delta" / DELTA_WEIGHTS).read_bytes()
    assert history(out) == history(tmp_path / "straight") and len(history(out)) == 8
    assert not checkpoints.exists()


def test_text_run_killed_and_resumed_writes_the_same_delta(tiny_bert_dir, tiny_text_csvs, tmp_path):
    train_csv, _ = tiny_text_csvs
    assert main(train_argv("text", train_csv, tmp_path / "straight", tiny_bert_dir)) == 0
    out = tmp_path / "resumed"
    kill_after_checkpoint(train_argv("text", train_csv, out, tiny_bert_dir), tmp_path / "resumed.checkpoints", epoch=2)
    assert main(train_argv("text", train_csv, out, tiny_bert_dir) + ["--resume"]) == 0
    assert (out / "delta" / DELTA_WEIGHTS).read_bytes() == (tmp_path / "straight" / "delta" / DELTA_WEIGHTS).read_bytes()
    assert history(out) == history(tmp_path / "straight")


def test_resume_without_a_checkpoint_is_refused(diabetes, tmp_path, capsys):
    assert main(train_argv("tabular", diabetes, tmp_path / "run") + ["--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_update_killed_mid_training_resumes_to_the_same_version(diabetes, tmp_path):
    """`selectune update` SIGKILLed during training, then --resume: the registered delta is the one an uninterrupted
    update registers, and finishing again registers nothing twice."""
    import shutil

    from selectune.registry import Registry

    assert main(train_argv("tabular", diabetes, tmp_path / "base", **{"--epochs": "3"})) == 0
    assert main(["registry", "add", str(tmp_path / "base" / "model"), "--name", "d", "--registry", str(tmp_path / "a")]) == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    new = diabetes.with_name("new.csv")

    def update(registry, out):
        return ["update", "--from", "d@1", "--data", str(new), "--epochs", "6", "--out", str(out), "--registry", str(registry), "--no-progress"]

    assert main(update(tmp_path / "a", tmp_path / "ua")) == 0
    kill_after_checkpoint(update(tmp_path / "b", tmp_path / "ub"), tmp_path / "ub" / "run.checkpoints", epoch=3)
    assert not (tmp_path / "ub" / "run").exists()
    assert main(update(tmp_path / "b", tmp_path / "ub") + ["--resume"]) == 0
    (tmp_path / "ub" / "update.json").unlink()  # as if killed between registering and writing update.json
    assert main(update(tmp_path / "b", tmp_path / "ub") + ["--resume"]) == 0
    with Registry(tmp_path / "a") as a, Registry(tmp_path / "b") as b:
        assert [v.version for v in b.versions("d")] == [1, 2]
        assert a.get("d@2").weights_sha256 == b.get("d@2").weights_sha256 and b.get("d@2").parent == 1
