#!/usr/bin/env bash
# Set up, then run the whole test suite (under 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh mlflow
# The report test renders HTML in a real headless browser: Debian's chromium.
if ! command -v chromium >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  echo "installing chromium (Debian) for the report test ..."
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q chromium >.venv/apt.log 2>&1 || { $SUDO apt-get update -q >>.venv/apt.log 2>&1 && $SUDO apt-get install -y -q chromium >>.venv/apt.log 2>&1; } || { tail -n 20 .venv/apt.log >&2; echo "setup failed: apt-get install chromium" >&2; exit 1; }
fi
. .venv/bin/activate
# One torch thread per process: several tests run servers or CLI subprocesses beside the test process, and
# two OpenMP threads per process on 2 cores oversubscribe them (a tiny-MLP step went from 2 ms to 276 ms).
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
python -m pytest -q "$@"
