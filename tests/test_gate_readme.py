"""The README's gate example runs: the drug-review task with its condition_group and period columns, the
main job's two runs (head-only as the model in use, BitFit as the update) trained here on a tiny BERT
instead of MiniLM (1 epoch), then the README's `selectune gate` line exactly as written."""
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
        for method in ("bitfit", "head"):
            assert main(["train", *common, "--method", method, "--out", f"runs/drug-reviews/{method}"]) == 0
        # the main job's table: both runs beside the majority class and the benchmark's chosen rows
        capsys.readouterr()
        reference = ROOT / "benchmarks" / "results" / "drug_reviews_mean_pooling.json"
        assert main(["summary", "runs/drug-reviews/bitfit", "runs/drug-reviews/head", "--reference", str(reference)]) == 0
        printed = capsys.readouterr().out.splitlines()
        table = printed[:printed.index("")] if "" in printed else printed  # the notes follow the table after a blank line
        assert table[0].split()[:7] == ["model", "accuracy", "macro_f1", "auroc", "epochs", "lr", "dropout"]
        rows = [line.split() for line in table[2:]]
        assert [r[0] for r in rows[:3]] == ["majority", "bitfit", "head"]
        assert rows[1][5:7] == ["0.001", "model"] and rows[2][5:7] == ["0.001", "model"]  # each method's default lr; no --dropout
        chosen = json.loads(reference.read_text())["chosen"]
        for row, (method, c) in zip(rows[3:], chosen.items(), strict=True):
            assert row[0] == method and row[1] == f"{c['test_accuracy']:.4f}" and row[2] == f"{c['test_macro_f1']:.4f}"
            assert row[4:6] == [f"{c['lr']:g}", "model" if c["dropout"] is None else f"{c['dropout']:g}"]
        # The tiny 1-epoch BitFit is not the best row: the printout says so, and what compare recommends from the reference.
        notes = printed[len(table) + 1:]
        assert notes[0].startswith("BitFit is not the best here: full (drug_reviews_mean_pooling.json, 8 epochs) has test macro_f1 0.469")
        # on validation (three seeds' mean) BitFit was best, so the reference's own rule recommends it
        assert notes[1].startswith("selectune compare on the reference rows would recommend bitfit: ")
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
