"""The README stays true: its two commands, its CLI examples and its results tables."""
import re
import shlex
from pathlib import Path

import pytest

from benchmarks.readme_table import BLOCKS, readme_block
from selectune.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(text):
    return re.findall(r"```(?:bash|python)?\n(.*?)```", text, flags=re.S)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    first = code_blocks(README)[0].splitlines()
    assert first[0].startswith("bash scripts/main-job.sh")
    assert first[1].startswith("bash scripts/test.sh")
    assert (ROOT / "scripts" / "main-job.sh").is_file() and (ROOT / "scripts" / "test.sh").is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci and "pytest" not in ci  # the README's command, nothing looser


def selectune_commands():
    for block in code_blocks(README):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("selectune "):
                yield line


@pytest.mark.parametrize("line", list(selectune_commands()))
def test_every_cli_example_parses(line):
    argv = shlex.split(line)[1:]
    build_parser().parse_args(argv)  # exits (SystemExit) on an unknown command or flag


@pytest.mark.parametrize("name", list(BLOCKS))
def test_results_tables_are_generated_from_the_benchmark_json(name):
    assert readme_block(README, name) == BLOCKS[name]()


def test_python_api_example_runs(tmp_path, monkeypatch):
    python = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(python) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(python[0], "README.md", "exec"), {})
    assert (tmp_path / "out" / "delta" / "delta.safetensors").stat().st_size < 150_000


def test_main_job_trains_bitfit_with_the_recipes_cross_validated_setting():
    """The main job's BitFit is the seed-0 refit of recipe.json's rating row: the setting CV chose, every training row,
    the recipe's other settings; its summary reads that row (and checks the figure when the job runs)."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe import RECIPE

    recipe = json.loads((ROOT / "benchmarks" / "results" / "recipe.json").read_text())
    row = recipe["tasks"]["rating"]["methods"]["bitfit"]
    assert recipe["recipe"] == {**RECIPE, "quick": False} and recipe["recipe"]["seeds"][0] == 0
    script = (ROOT / "scripts" / "main-job.sh").read_text().replace("\\\n", " ")
    line = next(ln for ln in script.splitlines() if ln.startswith("selectune train") and "--method bitfit" in ln)
    args = build_parser().parse_args(shlex.split(line)[1:])
    from selectune.models import DERIVED_MODELS

    assert args.model == "minilm" and DERIVED_MODELS["minilm"] == DERIVED_MODELS[RECIPE["model"]]  # one folder, two names
    assert (args.method, args.label_col, args.val_fraction, args.seed) == ("bitfit", "rating", 0, 0)
    assert (args.lr, args.epochs, args.dropout) == (row["setting"]["lr"], row["setting"]["epochs"], row["setting"]["dropout"])
    assert (args.batch_size, args.max_length, args.class_weight, args.warmup_ratio, args.new_lr) == (
        RECIPE["batch_size"], RECIPE["max_length"], RECIPE["class_weight"], RECIPE["warmup_ratio"], RECIPE["new_lr"])
    assert "selectune summary runs/drug-reviews/bitfit runs/drug-reviews/head --reference benchmarks/results/recipe.json" in script
