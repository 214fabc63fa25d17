"""The README's gate example runs: the drug-review task with its condition_group and period columns, the
main job's two runs (head-only as the model in use, BitFit on every training row as the update) trained here on a
tiny BERT instead of MiniLM (1 epoch), then the README's `selectune gate` line exactly as written."""
import json
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import torch

from selectune.cli import main
from selectune.data import export_bundled
from selectune.evaluate.criteria import load_criteria

ROOT = Path(__file__).resolve().parent.parent


def readme_gate_command() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.startswith("selectune gate ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("  #")[0])[1:]


def test_example_criteria_files_parse():
    for path in sorted((ROOT / "examples").glob("criteria*.yaml")):
        assert load_criteria(str(path)).criteria, path


def test_readme_gate_example_runs(tmp_path, monkeypatch, tiny_bert_dir, capsys):
    monkeypatch.chdir(tmp_path)
    paths = export_bundled("drug-reviews", "data/drug-reviews")
    train = pd.read_csv(paths["train"])
    train.iloc[:200].to_csv(paths["train"], index=False)  # tiny data: 200 training reviews; the whole test file
    shutil.copytree(ROOT / "examples", "examples")
    # scripts/main-job.sh's two runs, on the tiny model
    common = ["data/drug-reviews/train.csv", "--test", "data/drug-reviews/test.csv", "--model", tiny_bert_dir, "--text-col", "review",
              "--label-col", "rating", "--batch-size", "16", "--class-weight", "balanced", "--epochs", "1", "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread beats two contending ones on a busy 2-core machine
    try:
        # as scripts/main-job.sh: BitFit on every training row (no validation split), head-only with one
        assert main(["train", *common, "--method", "bitfit", "--val-fraction", "0", "--out", "runs/drug-reviews/bitfit"]) == 0
        assert main(["train", *common, "--method", "head", "--out", "runs/drug-reviews/head"]) == 0
        # the main job's table: both runs beside the majority class and recipe.json's rating rows (5-seed means with CIs)
        capsys.readouterr()
        reference = ROOT / "benchmarks" / "results" / "recipe.json"
        assert main(["summary", "runs/drug-reviews/bitfit", "runs/drug-reviews/head", "--reference", str(reference)]) == 0
        printed = capsys.readouterr().out.splitlines()
        table = printed[:printed.index("")]  # the notes follow the table after a blank line
        spans = [m.span() for m in re.finditer(r"-+", table[1])]  # the dashes under each column header
        rows = [{table[0][a:b].strip(): line[a:b].strip() for a, b in spans} for line in table[2:]]
        assert list(rows[0]) == ["model", "accuracy", "macro_f1", "95% CI", "auroc", "epochs", "lr", "dropout", "trainable %",
                                 "delta KB", "train s", "source"]
        assert [r["model"] for r in rows[:3]] == ["majority class", "bitfit", "head"]
        assert [(r["lr"], r["dropout"], r["95% CI"]) for r in rows[1:3]] == [("0.001", "model", "")] * 2  # default lr, no --dropout
        recipe = json.loads(reference.read_text())["tasks"]["rating"]["methods"]
        for row, (method, r) in zip(rows[3:], recipe.items(), strict=True):
            f1 = r["test"]["macro_f1"]
            assert (row["model"], row["macro_f1"], row["95% CI"]) == (method, f"{f1['mean']:.4f}", f"[{f1['ci_low']:.3f}, {f1['ci_high']:.3f}]")
            assert (row["epochs"], row["lr"], row["source"]) == (str(r["setting"]["epochs"]), f"{r['setting']['lr']:g}",
                                                                 "recipe.json rating: 5-seed mean")
        # BitFit's five-seed mean is judged among the reference's means, with the paired CI; then compare's rule on the
        # CV scores; then each run against the reference row of its method (the tiny 1-epoch runs are not those rows).
        notes = printed[len(table) + 1:]
        best = max(recipe, key=lambda m: recipe[m]["test"]["macro_f1"]["mean"])
        assert notes[0].startswith(f"BitFit is not the best here: {best} (recipe.json rating: 5-seed mean, ")
        assert f"; BitFit − {best} " in notes[0] and "(paired over the same test rows)." in notes[0]
        assert notes[1].startswith("selectune compare on the reference rows (3-fold cross-validation of the training rows")
        assert notes[2] == ("runs/drug-reviews/bitfit is not the reference's bitfit setting (lr 0.003, 8 epochs, dropout 0, every "
                            "training row, batch size 16, max length 128, class weight balanced), so it is not a row of it.")
        argv = readme_gate_command()
        out = Path(argv[argv.index("--out") + 1])
        code = main(argv)
    finally:
        torch.set_num_threads(threads)
    assert code in (0, 1)  # a tiny random model may well fail the criteria; what matters is that it was judged
    record = json.loads((out / "gate.json").read_text())
    assert code == (0 if record["passed"] else 1) and len(record["rows"]) == 5
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["task"]["labels"] == ["negative", "neutral", "positive"] and evaluation["task"]["positive_label"] == "negative"
    assert set(evaluation["subgroups"]) == {"condition_group", "period"}
    groups = {row["group"]: row for row in evaluation["subgroups"]["condition_group"]}
    assert "other" in groups and sum(row["n"] for row in groups.values()) == evaluation["task"]["n"] == 379
    assert any(row["small"] for row in groups.values())  # Pain has fewer than 30 test reviews
    assert set(evaluation["models"]["update"]["curves"]["roc"]) == {"negative", "neutral", "positive"}
    assert evaluation["models"]["base"]["identity"]["method"] == "head" and evaluation["models"]["update"]["identity"]["method"] == "bitfit"
    printed = capsys.readouterr().out
    assert "discrimination-non-inferior" in printed and ("gate PASSED" in printed or "gate FAILED" in printed)
