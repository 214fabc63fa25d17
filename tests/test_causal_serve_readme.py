"""The README's causal-LM serving commands, run as written on the real SmolLM2: `selectune serve --base smollm2` with two
BitFit deltas, and every `curl` line against it. The deltas are random-valued biases on SmolLM2 (as `train` would write
them, without the minutes of training; `tests/test_smollm2_e2e.py` runs the training command), and the port is a free
one instead of 8000 (a test must not collide with a server already there)."""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.causal_lm_serve import LABELS, make_causal_deltas
from selectune.cli import build_parser
from selectune.models import resolve_model

ROOT = Path(__file__).resolve().parent.parent
SECTION = (ROOT / "README.md").read_text().split("## Causal LM", 1)[1].split("\n## ", 1)[0]


def serving_block() -> list[str]:
    """The lines of the section's one bash block that serves (the first trains, evaluates, predicts and merges)."""
    [block] = [b for b in re.findall(r"```bash\n(.*?)```", SECTION, flags=re.S) if "selectune serve " in b]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_block_trains_a_second_delta_serves_both_and_calls_generate_and_score():
    lines = serving_block()
    assert [line.split()[0] for line in lines] == ["selectune", "selectune", "curl", "curl", "curl"]
    first_train = next(line for line in re.findall(r"```bash\n(.*?)```", SECTION, flags=re.S)[0].splitlines()
                       if line.startswith("selectune train"))
    # The second run is the first with another seed and its own folder.
    assert lines[0] == first_train.replace("--out runs/smollm2-bitfit", "--seed 1 --out runs/smollm2-bitfit-seed1")
    for line in lines[:2]:
        build_parser().parse_args(shlex.split(line)[1:])
    assert {"/v1/generate", "/v1/score"} <= {re.search(r"8000(/v1/\w+)", line).group(1) for line in lines[2:]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("causal-serve")
    base = str(resolve_model("smollm2"))
    make_causal_deltas(base, [folder / "runs" / "smollm2-bitfit" / "delta", folder / "runs" / "smollm2-bitfit-seed1" / "delta"],
                       seed=0, scale=0.02)
    port = _free_port()
    serve = shlex.split(serving_block()[1].replace("--port 8000", f"--port {port}"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-m", "selectune.cli", *serve[1:]], cwd=folder, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "selectune serve did not start"
            time.sleep(0.5)
        yield port
    finally:
        process.terminate()
        process.wait(30)


def test_the_curl_lines_run_as_written_against_the_served_smollm2(server):
    answers = []
    for line in serving_block()[2:]:
        done = subprocess.run(line.replace("127.0.0.1:8000", f"127.0.0.1:{server}"), shell=True, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    generated, from_messages, scored = answers
    for answer, model in ((generated, "reviews"), (from_messages, "reviews-seed1")):
        assert answer["model"] == model and answer["path"] == "mixed", answer
        assert 1 <= answer["tokens"] <= 5 and len(answer["token_ids"]) == answer["tokens"] and isinstance(answer["text"], str)
        assert answer["finish_reason"] in ("stop", "length")
    assert scored["model"] == "reviews" and list(scored["probabilities"]) == LABELS
    assert sum(scored["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) and scored["label"] in LABELS
