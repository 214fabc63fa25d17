"""`selectune serve` as a process: it starts with the good deltas, refuses a wrong-base one with a clear log
line, answers over HTTP, and refuses bad settings with exit 2 and no traceback."""
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import torch

from benchmarks.serve_deltas import make_perturbed_delta


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def test_server_process_starts_without_the_wrong_base_delta_and_says_why(tiny_bert_dir, tmp_path):
    from transformers import AutoTokenizer, BertModel

    deltas = tmp_path / "deltas"
    make_perturbed_delta(tiny_bert_dir, "bitfit", deltas / "good" / "delta", labels=["neg", "pos"], seed=0)  # a train run folder
    other = tmp_path / "other-base"
    model = BertModel.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        model.pooler.dense.bias.add_(0.5)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(other)
    make_perturbed_delta(str(other), "bitfit", deltas / "stale", labels=["neg", "pos"], seed=1)
    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "selectune.cli", "serve", "--base", tiny_bert_dir, "--deltas", str(deltas),
                                    "--port", str(port), "--log-level", "warning"], stdout=sink, stderr=subprocess.STDOUT, env=_env())
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        refusal = [line for line in text.splitlines() if "refused delta 'stale'" in line]
        assert refusal and "fingerprint" in refusal[0] and "Traceback" not in text
        models = httpx.get(f"{url}/v1/models").json()  # no --keys: model routes are open
        assert [m["name"] for m in models["models"]] == ["good"] and "stale" in models["refused"]
        answer = httpx.post(f"{url}/v1/predict", json={"model": "good", "inputs": ["works well"]}).json()
        assert answer["path"] == "mixed" and set(answer["predictions"][0]["probabilities"]) == {"neg", "pos"}
        admin = httpx.post(f"{url}/v1/models/good/unload")
        assert admin.status_code == 403 and "--keys" in admin.json()["detail"]
    finally:
        process.terminate()
        process.wait(30)


def test_bad_settings_exit_2_with_the_fix(tiny_bert_dir, tmp_path, capsys):
    from selectune.cli import main

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"sha256": "plain-secret", "tenant": "a", "models": ["x"]}]}))
    (tmp_path / "deltas").mkdir()
    for args, phrase in [
        (["--deltas", str(tmp_path / "missing")], "is not a folder"),
        (["--deltas", str(tmp_path / "deltas"), "--keys", str(keys)], "never the key itself"),
        (["--deltas", str(tmp_path / "deltas"), "--keys", str(tmp_path / "nokeys.json")], "not found"),
        (["--deltas", str(tmp_path / "deltas"), "--max-items", "64", "--max-batch-size", "32"], "must not exceed max_batch_size"),
        (["--deltas", str(tmp_path / "deltas"), "--base", str(tmp_path / "no-model")], "model folder not found"),
    ]:
        argv = ["serve", "--base", tiny_bert_dir, *args]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("selectune serve: error:") and phrase in err and "Traceback" not in err
