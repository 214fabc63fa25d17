"""causal-lm under ``accelerate launch``: 2 CPU processes train the tiny LLaMA to the same delta as one process (global batch
8 either way: 8 rows on one process, 4 per process on two), with DDP over gloo and with FSDP2 (Accelerate's plugin,
``--fsdp_version 2``). FSDP1 cannot start on CPU (Accelerate's plugin asks for a CUDA/XPU/... device in ``__post_init__``).

Warmup is 0: its length is ``int(warmup_ratio * steps)`` with steps counted in per-process batches, so it rounds
differently on one process and on two."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from selectune.delta import read_delta
from selectune.tasks import CausalLM


def _train_argv(ex, out, batch_size: int) -> list[str]:
    options = ex.train_options
    return ["-m", "selectune.cli", "train", ex.train, "--validation", ex.validation, "--test", ex.test, "--model", options["model"],
            "--prompt-col", options["prompt_col"], "--response-col", options["response_col"], "--max-length", str(options["max_length"]),
            "--batch-size", str(batch_size), "--epochs", "2", "--seed", "0", "--lr", "1e-2", "--warmup-ratio", "0", "--no-checkpoint", "--no-progress",
            "--out", str(out)]


def _launch(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


LAUNCH = ["-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """(folder, the tiny example, the run folder of one process at batch 8)."""
    folder = tmp_path_factory.mktemp("causal-accelerate")
    ex = CausalLM.write_example(folder)
    _launch(_train_argv(ex, folder / "one", batch_size=8))
    return folder, ex, folder / "one"


@pytest.mark.parametrize("launcher", [["--multi_gpu"], ["--use_fsdp", "--fsdp_version", "2", "--fsdp_sync_module_states", "false",
                                                        "--fsdp_auto_wrap_policy", "NO_WRAP"]], ids=["ddp", "fsdp2"])
def test_two_processes_train_the_same_delta_as_one(one_process, launcher):
    folder, ex, single = one_process
    out = folder / launcher[0].strip("-")
    _launch([*LAUNCH, *launcher, *_train_argv(ex, out, batch_size=4)])
    assert json.loads((out / "run_config.json").read_text())["num_processes"] == 2
    one, _ = read_delta(single / "delta")
    ddp, config = read_delta(out / "delta")
    assert config["selection"]["options"]["add_missing_biases"] is True and set(one) == set(ddp)
    moved = max(float(t.abs().max()) for t in one.values())
    assert moved > 1e-3  # the biases trained (they start at zero)
    for name in one:
        assert torch.allclose(one[name], ddp[name], atol=1e-5, rtol=1e-4), name
    test_one = json.loads((single / "metrics.json").read_text())["test"]
    test_ddp = json.loads((out / "metrics.json").read_text())["test"]
    assert test_ddp["n"] == test_one["n"] == 24  # gather_for_metrics drops the padding duplicates
    assert test_ddp["perplexity"] == pytest.approx(test_one["perplexity"], rel=1e-4)
    for metric in ("accuracy", "macro_f1", "auroc"):
        assert test_ddp[metric] == pytest.approx(test_one[metric], abs=1e-6), metric
