"""`selectune report`: the update report built from saved files only (HTML + Markdown + figures)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from selectune.cli import main
from selectune.report import report
from selectune.report.collect import read_run
from selectune.report.document import FILL_MARK, to_html, to_markdown
from selectune.report.run_sections import command_line

SECTIONS = ["Summary", "Identity", "The change", "Data", "Base vs update", "The gate", "Change record (PCCP-shaped)", "Model card",
            "Sources of this report"]


@pytest.fixture(scope="module")
def gated_report(gated_tabular_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "update-report"
    result = report(gated_tabular_runs["update"], gate=gated_tabular_runs["gate"], out=str(out))
    return {**result, "out": out, **{k: v for k, v in gated_tabular_runs.items()}}


def front_matter(markdown: str) -> dict:
    assert markdown.startswith("---\n")
    return yaml.safe_load(markdown.split("\n---\n", 1)[0][4:])


def test_report_holds_every_section_with_the_run_and_gate_numbers(gated_report):
    html = Path(gated_report["html"]).read_text()
    md = Path(gated_report["markdown"]).read_text()
    for title in SECTIONS:
        assert f"## {title}" in md and f">{title}</h2>" in html
    update, base = read_run(gated_report["update"]), read_run(gated_report["base"])
    # identity: base fingerprint, delta hash, versions, seed, the exact command
    for text in (update.selection["base_fingerprint"], update.delta["weights_sha256"], base.delta["weights_sha256"],
                 update.config["environment"]["torch"], update.config["environment"]["transformers"]):
        assert text in md and text in html
    assert f"```\n{command_line(update)}\n```" in md and "matches the recorded sha256" in md
    assert command_line(update).split()[0] == Path(update.config["argv"][0]).name  # the entry point, not its install path
    # the change: counts and % per role, as metrics.json recorded them
    bitfit_all = next(r for r in update.metrics["roles"] if r["role"] == "all")
    assert f"| all | {bitfit_all['tensors']} | {bitfit_all['trainable']:,} | {bitfit_all['total']:,} | {bitfit_all['pct_of_role']:.4f} |" in md
    # data: every file's sha256, split sizes and the label counts per split from checks.json
    for info in update.config["data_files"].values():
        assert info["sha256"] in md
    counts = next(r for r in update.checks["results"] if r["check"] == "class_imbalance")["details"]["counts"]["train"]
    assert f"| train | {sum(counts.values())} | {counts['benign']} (" in md
    # base vs update: every metric with its CI and the paired difference, exactly as evaluation.json holds them
    evaluation = json.loads((Path(gated_report["gate"]) / "evaluation.json").read_text())
    auroc_u = evaluation["models"]["update"]["metrics"]["auroc"]
    diff = evaluation["paired_differences"]["sensitivity"]
    assert f"{auroc_u['value']:.4f} \\[{auroc_u['ci_low']:.4f}, {auroc_u['ci_high']:.4f}\\]" in md
    assert f"{diff['value']:+.4f} \\[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}\\]" in md
    # subgroups: the small site is shown and flagged, not hidden
    assert re.search(r"\| tiny \| 9 \|.*n \\< 20: CI unreliable \|", md)
    # the gate table, row for row
    gate = json.loads((Path(gated_report["gate"]) / "gate.json").read_text())
    for row in gate["rows"]:
        assert re.search(rf"\| {re.escape(row['id'])} \|.*\| {'PASS' if row['passed'] else 'FAIL'} \|", md)
    assert gated_report["gate"] and ("Gate PASSED" in md) == gate["passed"] and gate["criteria"]["sha256"] in md
    # figures: ROC, PR, calibration, subgroups, history; PNGs beside the Markdown and inside the HTML
    figures = sorted(p.name for p in (gated_report["out"] / "figures").iterdir())
    assert figures == ["calibration.png", "history.png", "pr.png", "roc.png", "subgroups_1.png"]
    for name in figures:
        assert f"](figures/{name})" in md
        assert (gated_report["out"] / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.count('src="data:image/png;base64,') == len(figures) == gated_report["figures"]


def test_html_is_self_contained(gated_report):
    html = Path(gated_report["html"]).read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"https?://", html), re.findall(r"https?://\S{0,40}", html)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', html))
    assert "default-src 'none'" in html  # the page may load nothing, even if someone edits it later


def test_change_record_and_model_card_mark_what_a_person_must_fill(gated_report):
    md = Path(gated_report["markdown"]).read_text()
    html = Path(gated_report["html"]).read_text()
    for heading in ("Description of the modification", "Modification protocol", "Impact assessment", "Intended use", "Limitations"):
        assert f"### {heading}" in md
    for field in ("Reason for the update", "Primary intended uses", "Out-of-scope uses", "Clinical benefit and risk", "Reviewed by"):
        assert f"**[{FILL_MARK}] {field}:**" in md and f"[{FILL_MARK}] {field}:</b>" in html
    assert md.count(f"[{FILL_MARK}]") == html.count(f"[{FILL_MARK}]") - 1 == gated_report["fields_to_fill"]  # html: +1 in the subtitle
    # facts the files know are filled in: the gate outcome, the worse-by-CI metrics, the small subgroup
    assert "1 of 4 site groups are below the minimum n" in md
    assert "update procedure" in md and "rollback" in md


def test_hugging_face_header_parses_with_base_model_and_model_index(gated_report):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    md = Path(gated_report["markdown"]).read_text()
    meta = front_matter(md)
    assert meta["base_model"] == "base/model" and meta["library_name"] == "selectune"  # the update's base: the base run's model/
    update = read_run(gated_report["update"])
    assert meta["selectune"]["delta_sha256"] == update.delta["weights_sha256"]
    [entry] = meta["model-index"]
    assert entry["name"] == "update" and len(entry["results"]) == 1
    result = entry["results"][0]
    assert result["task"]["type"] == "tabular-classification" and result["dataset"]["split"] == "test"
    evaluation = json.loads((Path(gated_report["gate"]) / "evaluation.json").read_text())["models"]["update"]["metrics"]
    by_type = {(m["type"], m.get("config")): m for m in result["metrics"]}
    assert by_type[("roc_auc", None)]["value"] == round(evaluation["auroc"]["value"], 6)
    assert by_type[("f1", "macro")]["value"] == round(evaluation["macro_f1"]["value"], 6)
    assert f"{evaluation['auroc']['ci_low']:.4f}" in by_type[("roc_auc", None)]["name"]
    # the hub's own parser reads it back
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "update" and len(results) == len(result["metrics"])
    assert ModelCard(md).data.base_model == "base/model"


def test_same_files_give_the_same_report_bytes(gated_report, tmp_path):
    again = report(gated_report["update"], gate=gated_report["gate"], out=str(tmp_path / "again"))
    for name in ("report.html", "report.md", "figures/roc.png", "figures/subgroups_1.png"):
        # no timestamps, deterministic PNGs: a report can be regenerated and diffed
        assert (gated_report["out"] / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert again["fields_to_fill"] == gated_report["fields_to_fill"]


def test_without_a_gate_the_report_says_what_is_missing(gated_tabular_runs, tmp_path, capsys):
    out = tmp_path / "no-gate"
    assert main(["report", gated_tabular_runs["update"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no gate evidence (pass --gate GATE_DIR)" in printed and str(out / "report.html") in printed
    md = (out / "report.md").read_text()
    assert "**MISSING:** No gate evaluation for this update" in md
    assert "**MISSING:** No gate result for this update: acceptance criteria were not judged" in md
    assert "**MISSING:** The update run recorded no test metrics either (it was trained without --test)" in md
    meta = front_matter(md)
    assert meta["base_model"] == "base/model" and "model-index" not in meta  # no numbers, no made-up model-index


def test_without_a_gate_the_runs_own_test_metrics_are_shown_without_ci(tmp_path):
    from selectune.data import export_bundled
    from selectune.train.run import train

    files = export_bundled("breast-cancer", str(tmp_path / "bc"))
    train(files["old"], test=files["new"], model="mlp", method="full", lr=1e-3, epochs=1, feature_cols="mean_radius,mean_texture",
          label_col="label", out=str(tmp_path / "run"), progress=False)
    result = report(str(tmp_path / "run"), out=str(tmp_path / "report"))
    md = Path(result["markdown"]).read_text()
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert "| metric | update (point estimate, no CI) | majority class |" in md
    assert f"| auroc | {test['auroc']:.4f} |" in md
    auroc = next(m for m in front_matter(md)["model-index"][0]["results"][0]["metrics"] if m["type"] == "roc_auc")
    assert auroc == {"type": "roc_auc", "value": round(test["auroc"], 6), "name": "AUROC"}  # no CI claimed
    assert result["figures"] == 1 and result["gate"] is None


@pytest.mark.parametrize("case", ["not-a-run", "gate-of-another-update", "base-the-gate-did-not-judge", "tampered-evaluation",
                                  "out-exists", "bad-json"])
def test_bad_inputs_stop_with_a_message_and_write_nothing(case, gated_tabular_runs, tmp_path, capsys):
    import shutil

    runs = gated_tabular_runs
    out = tmp_path / "report"
    args = ["report", runs["update"], "--gate", runs["gate"], "--out", str(out)]
    expected = {"not-a-run": "lacks run_config.json", "gate-of-another-update": "judged an update whose delta sha256",
                "base-the-gate-did-not-judge": "compared against a base whose delta sha256",
                "tampered-evaluation": "the evidence was changed afterwards", "out-exists": "already exists",
                "bad-json": "is not valid JSON"}[case]
    if case == "not-a-run":
        args[1] = str(tmp_path)
    elif case == "gate-of-another-update":
        args[1] = runs["base"]
    elif case == "base-the-gate-did-not-judge":
        args += ["--base", runs["update"]]
    elif case in ("tampered-evaluation", "bad-json"):
        gate = tmp_path / "gate"
        shutil.copytree(runs["gate"], gate)
        target = gate / ("evaluation.json" if case == "tampered-evaluation" else "gate.json")
        target.write_text(target.read_text().replace('"value": 0.', '"value": 0.9', 1) if case == "tampered-evaluation" else "{")
        args[3] = str(gate)
    elif case == "out-exists":
        out.mkdir()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("selectune report: error: ") and expected in err
    assert not out.exists() or case == "out-exists" and not any(out.iterdir())
    assert not list(tmp_path.glob(".report.partial-*"))


def test_user_text_is_escaped_in_both_renderings():
    from selectune.report.document import Paragraph, Section, Table

    sections = [Section("x <b>", [Paragraph("<script>alert(1)</script> & *bold* | pipe"), Table(["a|b"], [["<img src=x>"]])])]
    html = to_html("t", "s", sections)
    md = to_markdown("t", "s", sections)
    assert "<script>alert" not in html and "&lt;script&gt;" in html and "<img src=x>" not in html
    assert "\\<script\\>" in md and "\\*bold\\*" in md and "a\\|b" in md


def test_multi_class_evaluation_renders_one_curve_per_class_and_model():
    # Hand-made predictions through the gate's own scorer: the report's evaluation sections need no model.
    import numpy as np

    from selectune.evaluate.records import Evaluation
    from selectune.evaluate.scorecard import EvaluationSettings, score_predictions
    from selectune.report.document import figures
    from selectune.report.evaluation_sections import evaluation_sections

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)

    def probs(noise):
        logits = np.eye(3)[y] * 2 + rng.normal(0, noise, (300, 3))
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    groups = pd.DataFrame({"site": np.array(["a", "b", "c"])[rng.integers(0, 3, 300)]})
    groups.loc[:9, "site"] = "small"
    evaluation = score_predictions(y, {"base": probs(1.5), "update": probs(1.0)}, {"base": 0.4, "update": 0.4}, ["neg", "neutral", "pos"],
                                   EvaluationSettings(resamples=50, positive_label="neg", group_cols=["site"], min_group_n=20), groups)
    evaluation = json.loads(json.dumps(evaluation))  # as the gate saves it
    sections = evaluation_sections(Evaluation.model_validate(evaluation), None, {})
    md = to_markdown("t", "s", sections)
    assert sorted(figures(sections)) == ["calibration", "pr", "roc", "subgroups_1"]
    assert "ROC curves of base and update on the test rows (one-vs-rest per class)" in md
    assert re.search(r"\| small \| 10 \|.*n \\< 20: CI unreliable \|", md)
    auroc = evaluation["models"]["update"]["metrics"]["auroc"]
    assert f"| auroc | {evaluation['models']['base']['metrics']['auroc']['value']:.4f}" in md and f"{auroc['value']:.4f}" in md
    assert "**MISSING:** No gate result for this update" in md
