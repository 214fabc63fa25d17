"""The README's report example runs after its gate example: the drug-review task with condition_group and
period, the main job's two runs (head-only in use, BitFit as the update) on a tiny BERT (1 epoch), then the
README's `selectune gate` and `selectune report` lines exactly as written."""
import json
import re
import shlex
from pathlib import Path

import pandas as pd
import shutil
import torch
import yaml

from selectune.cli import main
from selectune.data import export_bundled
from selectune.data.identifiers import count_identifiers

ROOT = Path(__file__).resolve().parent.parent


def readme_command(name: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.startswith(f"selectune {name} ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("  #")[0])[1:]


def test_readme_report_example_runs_on_the_drug_review_gate(tmp_path, monkeypatch, tiny_bert_dir, capsys):
    monkeypatch.chdir(tmp_path)
    paths = export_bundled("drug-reviews", "data/drug-reviews")
    pd.read_csv(paths["train"]).iloc[:120].to_csv(paths["train"], index=False)  # tiny data; the whole test file
    shutil.copytree(ROOT / "examples", "examples")
    common = ["data/drug-reviews/train.csv", "--test", "data/drug-reviews/test.csv", "--model", tiny_bert_dir, "--text-col", "review",
              "--label-col", "rating", "--batch-size", "16", "--class-weight", "balanced", "--epochs", "1", "--max-length", "48",
              "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread beats two contending ones on a busy 2-core machine
    try:
        # as scripts/main-job.sh: BitFit on every training row (no validation split), head-only with one
        assert main(["train", *common, "--method", "bitfit", "--val-fraction", "0", "--out", "runs/drug-reviews/bitfit"]) == 0
        assert main(["train", *common, "--method", "head", "--out", "runs/drug-reviews/head"]) == 0
        assert main(readme_command("gate") + ["--resamples", "200"]) in (0, 1)  # a tiny random model may fail; it was judged
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    argv = readme_command("report")
    assert main(argv) == 0
    out = Path(argv[argv.index("--out") + 1])
    gate = json.loads(Path("runs/drug-reviews/gate/gate.json").read_text())
    assert f"gate {'PASSED' if gate['passed'] else 'FAILED'}" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["calibration.png", "history.png", "pr.png", "roc.png",
                                                                   "subgroups_1.png", "subgroups_2.png"]
    assert "By condition_group" in md and "By period" in md and "| Pain | 17 |" in md
    # the update trained on every row (as the main job's BitFit): its history is training loss alone, and says why
    assert "Update: training loss per epoch; no validation rows, so the last epoch (1) was kept" in md
    for row in gate["rows"]:
        assert f"| {row['id']} |" in md
    assert md.count("[TO FILL]") >= 10 and '<div class="fill">' in html
    meta = yaml.safe_load(md.split("\n---\n", 1)[0].removeprefix("---\n"))
    assert meta["model-index"][0]["results"][0]["task"]["type"] == "text-classification"
    # The reviews hold exact dates (the data checks warn about them); none reaches the report.
    checks = json.loads(Path("runs/drug-reviews/bitfit/checks.json").read_text())
    assert next(r for r in checks["results"] if r["check"] == "identifiers")["details"]["matches"]["date"] > 0
    text = re.sub(r"sha256:[0-9a-f]+|data:image/png;base64,[A-Za-z0-9+/=]+", "", md + html)  # hashes may hold digit runs
    assert count_identifiers(text) == {}
