"""Every benchmark command the README shows runs as written: `python benchmarks/X.py ...` from the repo root, with
nothing on PYTHONPATH, answers `--help` (appended to the README's own command line) with its usage and exit 0."""
import concurrent.futures
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def benchmark_commands():
    """Each distinct `python benchmarks/....py [args]` command in the README, as its argv."""
    found = re.findall(r"`(python benchmarks/[^`]+\.py(?: [^`]*)?)`", README)
    for block in re.findall(r"```(?:bash)?\n(.*?)```", README, flags=re.S):
        found += [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines()
                  if line.startswith("python benchmarks/")]
    return sorted({tuple(shlex.split(command)) for command in found})


COMMANDS = benchmark_commands()


def test_the_readme_shows_the_benchmark_commands():
    scripts = {argv[1] for argv in COMMANDS}
    assert {"benchmarks/serve_throughput.py", "benchmarks/serve_load.py", "benchmarks/readme_table.py",
            "benchmarks/drug_reviews.py", "benchmarks/step_time.py"} <= scripts
    assert all((ROOT / script).is_file() for script in scripts)


def _run_help(argv):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user types it: the scripts find the repo
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, *argv[1:], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_every_readme_benchmark_command_answers_help():
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        done = dict(zip(COMMANDS, pool.map(_run_help, COMMANDS)))
    failed = {" ".join(argv): run.stderr[-800:] for argv, run in done.items() if run.returncode != 0 or "usage:" not in run.stdout}
    assert not failed, failed


@pytest.mark.parametrize("script", ["benchmarks/serve_throughput.py", "benchmarks/serve_load.py"])
def test_the_serving_benchmarks_import_the_repos_selectune_and_benchmarks(script):
    # Run from another folder: the script itself makes the repo root importable.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT.parent, capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0 and "usage:" in run.stdout, run.stderr[-800:]
