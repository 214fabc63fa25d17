"""Identifier-like strings (e-mail, phone, record number, exact date, URL) never reach the update report.

The report reads aggregate files only, never data rows; strings that still come from users (file names, the
command line, group values, the criteria file) are redacted with the data checks' patterns.
"""
from __future__ import annotations

import re

import pandas as pd
import pytest

from selectune.data.identifiers import count_identifiers
from selectune.report import report


def body_text(html: str) -> str:
    """Visible text of the page: tags, and the base64 of embedded figures, removed."""
    html = re.sub(r'src="data:image/png;base64,[^"]*"', "", html)
    return re.sub(r"<[^>]+>", " ", html)


PLANTED = ["jane.doe@example.org", "555-867-5309", "MRN: 00482913", "4829137650", "March 14th, 2021", "2019-07-04",
           "https://patient-portal.example.com/r/8841", "03/15/2022", "records@clinic.example"]


@pytest.fixture(scope="module")
def identifier_run(tiny_bert_dir, tmp_path_factory):
    """A 3-class text run and gate whose data, file names and group values hold identifier-like strings."""
    from selectune.evaluate.gate import gate
    from selectune.train.run import train

    out = tmp_path_factory.mktemp("identifiers")
    words = {"pos": ["great relief", "worked well", "much better"], "neg": ["terrible pain", "did not help", "made me sick"],
             "neutral": ["no change", "hard to say", "about the same"]}

    def rows(n, offset):
        data = []
        for i in range(n):
            label = ("pos", "neg", "neutral")[i % 3]
            planted = PLANTED[(i + offset) % len(PLANTED)]
            data.append({"review": f"{words[label][(i // 3) % 3]} visit {i} contact {planted}", "rating": label,
                         "clinic": ["north", "call 555-867-5309", "records@clinic.example"][(i // 3) % 3]})
        return pd.DataFrame(data)

    train_file, test_file = out / "notes 2019-07-04 jane.doe@example.org.csv", out / "test 03-15-2022.csv"
    rows(60, 0).to_csv(train_file, index=False)
    rows(45, 4).to_csv(test_file, index=False)
    common = dict(model=tiny_bert_dir, text_col="review", label_col="rating", epochs=1, batch_size=16, max_length=24, progress=False)
    train(str(train_file), method="head", lr=1e-2, out=str(out / "base"), **common)
    train(str(train_file), method="bitfit", out=str(out / "update 4829137650"), **common)
    criteria = out / "criteria.yaml"
    criteria.write_text("description: agreed with jane.doe@example.org on March 14th, 2021\n"
                        "criteria:\n  - {metric: macro_f1, rule: max_subgroup_drop, max_drop: 0.5, include_small_groups: true}\n")
    gate(base=str(out / "base"), update=str(out / "update 4829137650"), criteria=str(criteria), test=str(test_file),
         out=str(out / "gate"), group_cols="clinic", positive_label="neg", min_group_n=5, resamples=50)
    report(str(out / "update 4829137650"), gate=str(out / "gate"), out=str(out / "report"))
    return out


def test_identifier_like_strings_never_appear_in_the_report(identifier_run):
    html = (identifier_run / "report" / "report.html").read_text()
    md = (identifier_run / "report" / "report.md").read_text()
    for planted in PLANTED:
        assert planted not in html and planted not in md, planted
        assert planted.split("@")[0] not in md or "@" not in planted  # not even the local part of an e-mail
    # Nothing identifier-shaped is left anywhere in the text (hashes, which may hold digit runs, aside).
    for text in (body_text(html), md):
        text = re.sub(r"sha256:[0-9a-f]+", "", re.sub(r"\(figures/[a-z_0-9]+\.png\)", "", text))
        assert count_identifiers(text) == {}, count_identifiers(text)
    # What was removed is said, and the evidence is otherwise complete (a 3-class gate with its subgroup table).
    page = body_text(html)
    assert "[email]" in page and "[phone]" in page and "[date]" in page and "[id_number]" in page
    assert "By clinic" in page and "call [phone]" in page.split("By clinic")[1]  # group names pass through redaction
    assert "one-vs-rest per class" in md  # multi-class curves
