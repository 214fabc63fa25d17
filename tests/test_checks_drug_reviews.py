"""The data checks on the real drug reviews: the README's `selectune check` example runs and its figures hold;
the export's subgroup columns and its leak-free train/test pair."""
import json
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

from selectune.cli import main
from selectune.data import DataLeakageError, export_bundled, read_table, run_checks

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("drug-checks")
    export_bundled("drug-reviews", str(root / "data" / "drug-reviews"))
    return root


def readme_check_command() -> list[str]:
    section = README.split("## Data checks", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).replace("\\\n", " ")
    (line,) = [line for line in block.splitlines() if line.strip().startswith("selectune check")]
    return shlex.split(line)[1:]


def test_readme_check_example_runs_and_its_figures_hold(exported, monkeypatch, capsys):
    monkeypatch.chdir(exported)
    assert main(readme_check_command()) == 0
    out = capsys.readouterr().out
    assert "data checks passed with warnings" in out
    saved = json.loads((exported / "runs" / "checks.json").read_text())
    status = {r["check"]: r for r in saved["results"]}
    assert sorted(c for c, r in status.items() if r["status"] == "warn") == ["class_imbalance", "identifiers", "subgroup_size"]
    assert status["duplicate_leakage"]["status"] == "pass" and status["id_leakage"]["status"] == "skipped"
    # the figures quoted in the README's Data checks section
    imbalance = status["class_imbalance"]["message"]
    assert "neutral 46 (9.0%)" in imbalance and "positive 326 (64.0%)" in imbalance and "7.1x the smallest" in imbalance
    assert "Pain n=17" in status["subgroup_size"]["message"]
    found = status["identifiers"]["details"]
    assert found["matches"] == {"email": 0, "url": 0, "phone": 0, "id_number": 0, "date": 37}
    assert (found["rows_with_identifiers"], found["rows_scanned"]) == (25, 978)
    section = README.split("## Data checks", 1)[1]
    for figure in ("positive 64.0%", "neutral\n9.0%", "7.1x", "Pain, 17 test reviews", "37 dates\nin 25 of the 978 reviews"):
        assert figure.replace("\n", " ") in " ".join(section.split()), figure


def test_export_has_subgroup_columns_and_no_leak_between_files(exported):
    train = read_table(exported / "data" / "drug-reviews" / "train.csv")
    test = read_table(exported / "data" / "drug-reviews" / "test.csv")
    assert (len(train), len(test)) == (599, 379)
    assert {"review_id", "date", "year", "condition", "period", "condition_group"} <= set(train.columns)
    # no patient/user id in the source: review_id is unique per review, in and across files
    assert train["review_id"].is_unique and not set(train["review_id"]) & set(test["review_id"])
    assert not [c for c in train.columns if re.search(r"patient|user|author|member", c, re.I)]
    counts = {name: {col: frame[col].value_counts().to_dict() for col in ("period", "condition_group")}
              for name, frame in (("train", train), ("test", test))}
    assert counts["train"]["period"] == {"2008-2012": 176, "2013-2015": 185, "2016-2017": 238}
    assert counts["test"]["period"] == {"2008-2012": 124, "2013-2015": 106, "2016-2017": 149}
    assert counts["train"]["condition_group"] == {"Birth Control": 116, "Depression": 28, "Pain": 27, "other": 428}
    assert counts["test"]["condition_group"] == {"Birth Control": 76, "Depression": 25, "Pain": 17, "other": 261}
    assert (train["period"] == train["year"].map(lambda y: "2008-2012" if y <= 2012 else "2013-2015" if y <= 2015 else "2016-2017")).all()
    report = run_checks({"train": train, "test": test}, text_col="review", label_col="rating", group_cols="period,condition_group")
    assert report.status == "warn" and not report.refusals
    # put back the training copy of the review the source has in both files (Etonogestrel / Implanon): refused
    leaky = pd.concat([train, test.iloc[[28]].assign(drugName="Etonogestrel")], ignore_index=True)
    with pytest.raises(DataLeakageError, match=r"1 text shared by train and test \(train rows 600; test rows 29\)"):
        run_checks({"train": leaky, "test": test}, text_col="review", label_col="rating")
