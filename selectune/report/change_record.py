"""The change record (shaped like a PCCP), the Model Card sections, and the Hugging Face model-card header.

What the saved files know is filled in; what only a person can say (intended use, clinical risk,
sign-off) is a ``FillIn`` marked "TO FILL" in both renderings. The PCCP shape follows the FDA's guidance
on predetermined change control plans: description of the modification, modification protocol (data
management, re-training, performance evaluation, update procedure) and impact assessment.
"""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

from selectune.evaluate.records import Evaluation, GateRecord
from selectune.report.collect import RunEvidence
from selectune.report.document import Fields, FillIn, Notice, Paragraph, Section
from selectune.report.evaluation_sections import fmt, verdict
from selectune.report.privacy import redact
from selectune.report.run_sections import base_model_name, short_model_name
from selectune.tasks import TASKS, get_task

# selectune metric -> (Hugging Face metric type, config, display name)
HF_METRICS = {
    "auroc": ("roc_auc", None, "AUROC"), "auprc": ("average_precision", None, "AUPRC"), "accuracy": ("accuracy", None, "Accuracy"),
    "macro_f1": ("f1", "macro", "Macro F1"), "sensitivity": ("recall", None, "Sensitivity"), "specificity": ("specificity", None, "Specificity"),
    "ppv": ("precision", None, "PPV"), "npv": ("npv", None, "NPV"), "brier": ("brier_score", None, "Brier score"),
    "ece": ("ece", None, "Expected calibration error"), "mae": ("mae", None, "MAE"), "rmse": ("rmse", None, "RMSE"),
    "r2": ("r_squared", None, "R²"),
}


def describe_change(update: RunEvidence, base: RunEvidence | None) -> str:
    m = update.metrics
    roles = [r for r in m.get("roles", []) if r["role"] != "all" and r["trainable"]]
    where = ", ".join(f"{r['role']} {r['trainable']:,}" for r in roles) or "none"
    start = f"the model in use ({base.metrics.get('method')} run {redact(base.path.name)})" if base else "the base model"
    return (f"An update of {start} on {base_model_name(update)}: {m.get('method')} re-trained {m.get('trainable_parameters', 0):,} of "
            f"{m.get('total_parameters', 0):,} parameters ({m.get('trainable_percent', 0):.3f}%; by role: {where}). The rest of the "
            "weights are unchanged and identified by the base fingerprint; the update ships as a delta file tied to that fingerprint.")


def pccp_section(update: RunEvidence, base: RunEvidence | None, gate: GateRecord | None, headline: list[dict]) -> Section:
    section = Section("Change record (PCCP-shaped)")
    section.add(Paragraph("Filled from the run's files where they know the answer; every field marked TO FILL needs a person."))
    desc = section.sub("Description of the modification")
    desc.add(Paragraph(describe_change(update, base)))
    desc.add(FillIn("Reason for the update", "why the model in use is being changed (new data period, drift observed, new site, ...)"))
    desc.add(FillIn("Change to intended use or indications", "state 'none' or describe; a change here usually needs a new submission, not a PCCP update"))

    protocol = section.sub("Modification protocol")
    cfg = update.config.get("train_config", {})
    files = update.config.get("data_files", {})
    protocol.add(Fields([
        ("data management", "files identified by sha256 ("
         + ", ".join(f"{role} {info.get('sha256', '')[:19]}…" for role, info in files.items())
         + "); data checks: " + ((update.checks or {}).get("status") or "not recorded")),
        ("re-training practice", f"method {update.metrics.get('method')}, lr {cfg.get('lr')}, epochs {cfg.get('epochs')}, "
         f"batch {cfg.get('batch_size')}, seed {cfg.get('seed')}; the exact command is in Identity"),
        ("performance evaluation", "bootstrap CIs on held-out test rows, a paired comparison with the model in use, subgroup "
         "tables and acceptance criteria fixed before evaluation" if gate else "NOT DONE: no gate evaluation (see Base vs update)"),
        ("acceptance criteria", f"criteria file sha256 {gate.criteria.sha256}" if gate else "none judged"),
        ("update procedure", "apply the delta to the base with the recorded fingerprint (a different base is refused); rollback = "
         "unload the delta, which restores the base bit for bit"),
    ]))
    protocol.add(FillIn("Who approves deployment", "role and name of the person or board that signs off an update"))
    protocol.add(FillIn("Monitoring after deployment", "what is watched in production (metrics, drift, complaints), by whom, how often"))

    impact = section.sub("Impact assessment")
    if gate is None:
        impact.add(Notice("missing", "No gate result: the update's impact against the model in use was not measured."))
    else:
        failed = [redact(r.id) for r in gate.rows if not r.passed]
        passed = gate.passed
        impact.add(Notice("pass" if passed else "fail",
                          f"Gate {'passed' if passed else 'failed'}" + (f" on: {', '.join(failed)}" if failed else ": every criterion met")))
    changes = [f"{h['metric']} {fmt(h['difference'], signed=True)}" for h in headline if h.get("difference")]
    if changes:
        impact.add(Paragraph("Paired change update − base [95% CI]: " + "; ".join(changes) + "."))
        for word, level in (("worse", "warn"), ("better", "pass")):
            named = [h["metric"] for h in headline if h.get("difference") and verdict(h["difference"], h["metric"]) == word]
            if named:
                impact.add(Notice(level, f"The paired 95% CI shows the update {word} than the model in use on: {', '.join(named)}."))
    impact.add(FillIn("Clinical benefit and risk", "what better or worse predictions mean for patients in this use; who could be harmed"))
    impact.add(FillIn("Risk mitigations", "e.g. human review of flagged cases, restricted rollout, subgroup monitoring"))
    return section


def model_card_sections(update: RunEvidence, evaluation: Evaluation | None, headline: list[dict]) -> Section:
    section = Section("Model card")
    details = section.sub("Model details")
    task = update.task
    details.add(Fields([("base model", base_model_name(update)), ("task", task.get("kind")),
                        ("labels", redact(", ".join(task.get("labels") or []) or "–")),
                        ("update method", update.metrics.get("method")), ("library", f"selectune {update.delta.get('selectune_version')}")]))
    intended = section.sub("Intended use")
    intended.add(FillIn("Primary intended uses", "the clinical question this model answers and the decision it supports"))
    intended.add(FillIn("Primary intended users", "e.g. pharmacovigilance analysts; not patients"))
    intended.add(FillIn("Out-of-scope uses", "uses this model must not be put to"))

    limits = section.sub("Limitations")
    known = []
    n = next((h.get("n") for h in headline if h.get("n")), None)
    if n:
        known.append(f"Evaluated on {n:,} test rows; see the CI widths in Base vs update before trusting small differences.")
    if evaluation:
        for column, rows in evaluation.subgroups.items():
            small = [r for r in rows if r.small]
            if small:
                known.append(f"{len(small)} of {len(rows)} {redact(column)} groups are below the minimum n; their metrics are unreliable.")
    else:
        known.append("No base-vs-update evaluation with CIs or subgroups was run for this update.")
    for result in (update.checks or {}).get("results", []):
        if result.get("status") in ("warn", "refuse"):
            known.append(f"Data check {result.get('check')}: {result.get('status')} (see Data checks).")
    baseline = update.metrics.get("majority_baseline") or {}
    test = update.metrics.get("test") or {}
    if baseline.get("macro_f1") is not None and test.get("macro_f1") is not None and test["macro_f1"] <= baseline["macro_f1"]:
        known.append("The update does not beat the majority-class baseline on macro-F1.")
    known.append("The delta only works on the exact base weights it was trained on (checked by fingerprint).")
    for text in known:
        limits.add(Paragraph("• " + text))
    limits.add(FillIn("Further limitations", "populations, settings or data sources the training data does not cover"))
    section.sub("Ethical considerations").add(FillIn("Ethical considerations", "consent, data provenance, fairness concerns beyond the measured gaps"))
    section.sub("Sign-off").add(FillIn("Reviewed by", "name, role and date of review"))
    return section


def hf_metadata(update: RunEvidence, headline: list[dict], model_name: str) -> str:
    """The YAML front matter of a Hugging Face model card: base_model and model-index with the update's test metrics."""
    base_model = short_model_name(str(update.config.get("model", "")))
    test = update.config.get("data_files", {}).get("test", {})
    dataset = redact("/".join(Path(test.get("path", "test")).parts[-2:])) if test else "held-out split of the training file"
    kind = update.task.get("kind") or next(iter(TASKS))  # no kind recorded: the first registered task, as before
    results = []
    for h in headline:
        if h["metric"] not in HF_METRICS:
            continue
        hf_type, config, name = HF_METRICS[h["metric"]]
        est = h["update"]
        ci = f" (95% CI {est.ci_low:.4f}–{est.ci_high:.4f})" if est.ci_low is not None and est.ci_high is not None else ""
        results.append(EvalResult(task_type=get_task(kind).hf_task_type if kind in TASKS else kind, task_name=kind.replace("-", " "), dataset_type="csv",
                                  dataset_name=dataset, dataset_split="test", metric_type=hf_type, metric_config=config,
                                  metric_value=round(float(est.value), 6), metric_name=name + ci))
    card = ModelCardData(base_model=base_model, library_name="selectune", model_name=model_name,
                         tags=["selectune", str(update.metrics.get("method")), kind, "medical"],
                         eval_results=results or None,
                         selectune={"base_fingerprint": update.selection.get("base_fingerprint"),
                                    "delta_sha256": update.delta.get("weights_sha256"),
                                    "trainable_parameters": update.metrics.get("trainable_parameters")})
    return "---\n" + card.to_yaml() + "\n---\n"
