"""Base vs update: the gate's saved evaluation rendered as tables and figures (nothing is recomputed).

The evaluation is evaluation.json as ``selectune.evaluate.records.Evaluation``: ``models`` (per model: metrics
with CIs, threshold, curves, confusion), ``paired_differences``, ``subgroups`` and ``fairness``. The gate is
gate.json as ``records.GateRecord``; its rows are ``selectune.evaluate.criteria.judge``'s.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from selectune.evaluate.metrics import CLASSIFICATION_METRICS, HIGHER_IS_BETTER, REGRESSION_METRICS
from selectune.evaluate.records import Estimate, Evaluation, GateRecord, GateRow, ModelEvaluation, Threshold
from selectune.report.document import Code, Figure, Notice, Paragraph, Section, Table
from selectune.report.plots import calibration_figure, pr_figure, roc_figure, subgroup_figure
from selectune.report.privacy import redact

NAN = float("nan")
MODEL_NAMES = {"base": "base (in use)", "update": "update"}
SUBGROUP_METRIC_PREFERENCE = ("auroc", "macro_f1", "accuracy", "mae", "rmse")
ORDER = CLASSIFICATION_METRICS + REGRESSION_METRICS
LINESTYLES = ("-", "--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1)))


def ordered(metrics) -> list[str]:
    """Headline order (discrimination, decisions, calibration), not the alphabetical order JSON was saved in."""
    return sorted(metrics, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))


def fmt(est: Estimate | None, signed: bool = False) -> str:
    """0.8123 [0.7900, 0.8350]; 'n/a' where undefined."""
    if est is None or est.value is None:
        return "n/a"
    spec = "+.4f" if signed else ".4f"
    text = format(est.value, spec)
    if est.ci_low is not None and est.ci_high is not None:
        text += f" [{format(est.ci_low, spec)}, {format(est.ci_high, spec)}]"
    return text


def _nums(values: list) -> list[float]:
    return [NAN if v is None else float(v) for v in values]


def direction(metric: str) -> str:
    higher = HIGHER_IS_BETTER.get(metric)
    return "higher is better" if higher else "lower is better" if higher is not None else ""


def verdict(diff: Estimate | None, metric: str) -> str:
    """Reading of a paired CI: does it exclude zero, and on which side."""
    if diff is None or diff.ci_low is None:
        return "no CI"
    higher = HIGHER_IS_BETTER.get(metric, True)
    if diff.ci_low > 0:
        return "better" if higher else "worse"
    if diff.ci_high < 0:
        return "worse" if higher else "better"
    return "no clear difference"


def subgroup_metric(evaluation: Evaluation, gate_rows: list[GateRow]) -> str:
    """The metric the subgroup table shows: the one a subgroup criterion judged, else the first defined headline."""
    for row in gate_rows:
        if row.rule == "max_subgroup_drop":
            return row.metric
    available = evaluation.models["update"].metrics
    return next((m for m in SUBGROUP_METRIC_PREFERENCE if m in available and available[m].value is not None), next(iter(available)))


def metrics_table(evaluation: Evaluation) -> Table:
    models, diffs = evaluation.models, evaluation.paired_differences or {}
    names = [n for n in ("base", "update") if n in models] + [n for n in models if n not in ("base", "update")]
    rows = []
    for metric in ordered(models[names[-1]].metrics):
        row = [metric, *(fmt(models[n].metrics.get(metric)) for n in names)]
        if diffs:
            row += [fmt(diffs.get(metric), signed=True), verdict(diffs.get(metric), metric)]
        rows.append(row + [direction(metric)])
    settings = evaluation.settings
    level = f"{settings.confidence:.0%}"
    columns = ["metric", *(MODEL_NAMES.get(n, n) for n in names)]
    columns += (["update − base (paired)", "paired CI says"] if diffs else []) + ["direction"]
    caption = (f"Point estimate [{level} bootstrap CI] on the same {evaluation.task.n} test rows; "
               f"{settings.bootstrap}; seed {settings.seed}.")
    return Table(columns, rows, caption)


def _curve_sets(models: dict[str, ModelEvaluation], kind: str) -> dict[str, dict]:
    """model -> class -> points, flattened to legend name -> points for one figure."""
    out = {}
    for name, model in models.items():
        per_class = getattr(model.curves, kind) if model.curves else {}
        for i, (cls, curve) in enumerate(per_class.items()):
            points = curve.model_dump()
            single = len(per_class) == 1
            label = MODEL_NAMES.get(name, name) + ("" if single else f": {redact(cls)}")
            # colour = model, line style = class
            out[name if single else f"{name}:{cls}"] = {k: _nums(v) for k, v in points.items() if k != "threshold"} | {
                "label": label, "linestyle": LINESTYLES[i % len(LINESTYLES)]}
    return out


def curves_section(evaluation: Evaluation) -> Section:
    models, task = evaluation.models, evaluation.task
    section = Section("Curves")
    if not any(m.curves is not None for m in models.values()):
        return section.add(Paragraph("Regression: no ROC, PR or calibration curves."))
    roc, pr = _curve_sets(models, "roc"), _curve_sets(models, "pr")
    multi = len(task.labels or []) > 2
    scope = "one-vs-rest per class" if multi else f"positive class {redact(task.positive_label)}"
    for key, points in roc.items():
        auroc = models[key.split(":")[0]].metrics.get("auroc") if ":" not in key else None
        auc = auroc.value if auroc else None
        if auc is not None:
            points["label"] += f" (AUROC {auc:.3f})"
    if roc:
        section.add(Figure("roc", roc_figure(roc, f"ROC, {scope}"), f"ROC curves of base and update on the test rows ({scope})."))
    prevalence = None
    counts = task.label_counts or {}
    if not multi and counts and task.positive_label in counts:
        prevalence = counts[task.positive_label] / max(sum(counts.values()), 1)
    if pr:
        section.add(Figure("pr", pr_figure(pr, prevalence, f"Precision–recall, {scope}"),
                           f"Precision–recall curves ({scope}); the dotted line is a model that flags at random."))
    calibration = {}
    for name, model in models.items():
        cal = model.curves.calibration if model.curves else None
        if cal:
            ece = model.metrics["ece"].value if "ece" in model.metrics else None
            calibration[name] = {"predicted": _nums(cal.predicted), "observed": _nums(cal.observed), "count": cal.count,
                                 "label": MODEL_NAMES.get(name, name) + (f" (ECE {ece:.3f})" if ece is not None else "")}
    if calibration:
        cal = next(m.curves.calibration for m in models.values() if m.curves)
        section.add(Figure("calibration", calibration_figure(calibration, f"Calibration: {cal.of}"),
                           f"Calibration: {cal.bins} bins, strategy {cal.strategy}, of {cal.of}; "
                           "marker size follows the rows in the bin."))
    rows = []
    for name, model in models.items():
        c = model.confusion
        if c:
            threshold = model.threshold
            value = threshold.value if isinstance(threshold, Threshold) else threshold
            source = (threshold.validation or {}).get("source", "") if isinstance(threshold, Threshold) else ""
            rows.append([MODEL_NAMES.get(name, name), value, redact(source) or "–", c.tp, c.fp, c.fn, c.tn])
    if rows:
        section.add(Table(["model", "threshold", "chosen on", "TP", "FP", "FN", "TN"], rows,
                          f"Decisions for the positive class {redact(task.positive_label)} at each model's threshold "
                          f"(rule {evaluation.settings.threshold_rule}, chosen on validation rows, never on test)."))
    return section


def _estimate_parts(est: Estimate | None) -> tuple[float, float, float]:
    """(value, ci_low, ci_high) with NaN where undefined, for a figure."""
    return tuple(NAN if est is None or getattr(est, k) is None else getattr(est, k) for k in ("value", "ci_low", "ci_high"))


def subgroups_section(evaluation: Evaluation, gate_rows: list[GateRow]) -> Section:
    section = Section("Subgroups")
    subgroups = evaluation.subgroups
    if not subgroups:
        return section.add(Notice("missing", "No subgroup columns were evaluated (the gate ran without --group-cols)."))
    metric = subgroup_metric(evaluation, gate_rows)
    min_n = evaluation.settings.min_group_n
    for column, rows in subgroups.items():
        sub = section.sub(f"By {redact(column)}")
        table = []
        classification = "prevalence" in rows[0].model_fields_set  # a regression row has mean_label instead
        for r in rows:
            base = (r.metrics.get("base") or {}).get(metric)
            update = (r.metrics.get("update") or {}).get(metric)
            diff = (r.difference or {}).get(metric)
            table.append([redact(r.group), r.n, r.positives, r.prevalence if classification else r.mean_label,
                          fmt(base), fmt(update), fmt(diff, signed=True),
                          f"n < {min_n}: CI unreliable" if r.small else ""])
        sub.add(Table(["group", "n", "positives", "prevalence" if classification else "mean label",
                       f"base {metric}", f"update {metric}", "update − base (paired)", "flag"], table,
                      f"{metric} per {redact(column)} group with 95% bootstrap CIs; small groups are shown, flagged, not hidden."))
        estimates = {name: [_estimate_parts((r.metrics.get(name) or {}).get(metric)) for r in rows]
                     for name in ("base", "update") if any(name in r.metrics for r in rows)}
        sub.add(Figure(f"subgroups_{len(section.subsections)}",
                       subgroup_figure(metric, [redact(r.group) for r in rows],
                                       {MODEL_NAMES[k]: v for k, v in estimates.items()}, [r.small for r in rows],
                                       title=f"{metric} by {redact(column)}"),
                       f"{metric} by {redact(column)}: base and update with 95% CIs; hollow markers: below the minimum n."))
    fairness = evaluation.fairness
    if fairness:
        rows = []
        for column, entry in fairness.items():
            for name in ("base", "update"):
                gaps = getattr(entry, name)
                if gaps is not None:
                    rows.append([redact(column), MODEL_NAMES[name], gaps.demographic_parity_difference,
                                 gaps.equalized_odds_difference, redact(", ".join(entry.included)),
                                 redact("; ".join(f"{g} ({why})" for g, why in entry.excluded.items()))])
        section.sub("Fairness gaps").add(Table(
            ["column", "model", "demographic parity difference", "equalized odds difference", "groups compared", "left out"], rows,
            "fairlearn, on the thresholded decision for the positive class; 0 means equal across groups."))
    return section


def gate_section(gate: GateRecord | None) -> Section:
    section = Section("The gate")
    if gate is None:
        return section.add(Notice("missing", "No gate result for this update: acceptance criteria were not judged. Run "
                                             "`selectune gate --base BASE_RUN --update RUN --criteria criteria.yaml --out GATE_DIR`, "
                                             "then `selectune report RUN --gate GATE_DIR --out REPORT_DIR`."))
    rows, passed = gate.rows, gate.passed
    section.add(Notice("pass" if passed else "fail",
                       f"Gate {'PASSED' if passed else 'FAILED'}: {sum(r.passed for r in rows)} of {len(rows)} criteria met."))
    section.add(Table(["criterion", "rule", "result", "evidence"],
                      [[redact(r.id), redact(r.criterion), "PASS" if r.passed else "FAIL", redact(r.evidence)] for r in rows]))
    criteria = gate.criteria
    section.add(Paragraph(f"Criteria file {redact(Path(criteria.path).name)}, sha256 {criteria.sha256}, as "
                          "written before the evaluation ran (its hash is recorded so it cannot change unnoticed):"))
    if criteria.text:
        section.add(Code(redact(criteria.text).rstrip()))
    return section


def evaluation_sections(evaluation: Evaluation | None, gate: GateRecord | None, update_metrics: dict) -> list[Section]:
    """Base vs update with CIs, curves, subgroups and the gate; a clear notice where the gate is missing."""
    section = Section("Base vs update")
    if evaluation is None:
        section.add(Notice("missing", "No gate evaluation for this update, so there are no base-vs-update metrics, CIs, curves or "
                                      "subgroup tables. Run `selectune gate` and pass its folder with --gate."))
        test = update_metrics.get("test") or {}
        if test:
            baseline = update_metrics.get("majority_baseline") or {}
            section.add(Table(["metric", "update (point estimate, no CI)", "majority class"],
                              [[k, v, baseline.get(k)] for k, v in test.items() if k != "n"],
                              f"The update's test metrics as recorded by `selectune train` (n={test.get('n')}), without CIs."))
        else:
            section.add(Notice("missing", "The update run recorded no test metrics either (it was trained without --test)."))
        return [section, gate_section(gate)]
    gate_rows = gate.rows if gate else []
    section.add(metrics_table(evaluation))
    definitions = evaluation.definitions
    shown = [m for m in ordered(evaluation.models["update"].metrics) if m in definitions]
    if shown:
        section.add(Table(["metric", "definition"], [[m, definitions[m]] for m in shown]))
    section.subsections += [curves_section(evaluation), subgroups_section(evaluation, gate_rows)]
    return [section, gate_section(gate)]


def headline(evaluation: Evaluation | None, update_metrics: dict) -> list[dict[str, Any]]:
    """[{metric, update, base, difference, n}] (Estimates) of the update's metrics, from the gate when there is one,
    for the model card and its YAML header."""
    if evaluation is None:
        test = update_metrics.get("test") or {}
        # the training run's point estimates: no resamples, no CI
        return [{"metric": k, "update": Estimate(value=v, ci_low=None, ci_high=None, valid_resamples=0), "base": None,
                 "difference": None, "n": test.get("n")}
                for k, v in test.items() if k not in ("n", "loss") and isinstance(v, (int, float)) and math.isfinite(v)]
    models, diffs = evaluation.models, evaluation.paired_differences or {}
    update = models["update"].metrics
    base = models["base"].metrics if "base" in models else {}
    return [{"metric": m, "update": update[m], "base": base.get(m), "difference": diffs.get(m), "n": evaluation.task.n}
            for m in ordered(update) if update[m].value is not None]
